"""Accuracy under the 15 common corruptions of Hendrycks & Dietterich 2019, 5 severities each.

Two sources, never mixed up in the report:

  released   CIFAR-10-C itself (https://zenodo.org/records/2535967), read offline like the
             other datasets: `$CNN_ARCHIVE_DIR/cifar10_corrupted/CIFAR-10-C/` (the extracted
             tarball: `<corruption>.npy`, 50,000 uint8 images = severities 1..5 x the 10,000
             test images in their original order, and `labels.npy`). Used for CIFAR-10 when
             present; the report says "CIFAR-10-C".
  generated  The same 15 corruptions applied to our test split by `imagecorruptions`
             (the maintained fork `imagecorruptions-imaug`, from the bethgelab package of
             Michaelis et al. 2019). Its severity constants are ImageNet-C's, harsher than
             the CIFAR-10-C ones, so these numbers are labelled "generated" and are not
             comparable with published CIFAR-10-C results; they compare our models with
             each other. Images under 32 pixels (MNIST) are zero-padded to 32, corrupted as
             RGB and cropped back; single-channel images are returned to grey by the ITU-R
             601 luma (PIL's "L").

Generation is deterministic: image i of corruption c at severity s draws from numpy's
generator seeded by (config.seed, c, s, i), so the first N images of a quick look are
exactly those of the full run. The library draws from numpy's global generator; its state
is saved before and restored after, so nothing outside changes.
"""
import contextlib
import importlib.metadata
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cnn.errors import UserError
from cnn.robustness.section import (MISSING, Column, Inputs, ReportSection, Table,
                                    percent)

CORRUPTIONS = (  # CIFAR-10-C's order: noise, blur, weather, digital
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
RELEASED_DIR = ("cifar10_corrupted", "CIFAR-10-C")
MIN_SIZE = 32  # imagecorruptions refuses smaller images
TAKES_SEED = ("impulse_noise", "glass_blur")  # the library's own seed argument
PACKAGE = "imagecorruptions-imaug"


@contextlib.contextmanager
def _numpy_seeded(seed: int):
  state = np.random.get_state()
  np.random.seed(seed)
  try:
    yield
  finally:
    np.random.set_state(state)


def _image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
  entropy = [seed, CORRUPTIONS.index(corruption), severity, index]
  return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _to_grey(rgb: np.ndarray) -> np.ndarray:
  luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
  """One uint8 (H, W, C) image, C = 1 or 3, corrupted; same shape and dtype."""
  try:
    from imagecorruptions import corrupt  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"generated corruptions need {PACKAGE}: pip install {PACKAGE}==1.1.5 "
                    "(requirements.txt), or leave them out: "
                    "--config.robustness.sections=calibration,adversarial") from None
  h, w, channels = image.shape
  top, left = max(0, (MIN_SIZE - h) // 2), max(0, (MIN_SIZE - w) // 2)
  padded = np.pad(image, ((top, max(0, MIN_SIZE - h) - top),
                          (left, max(0, MIN_SIZE - w) - left), (0, 0)))
  rgb = np.repeat(padded, 3, axis=-1) if channels == 1 else padded
  kwargs = {"seed": seed} if corruption in TAKES_SEED else {}
  with _numpy_seeded(seed):
    out = np.asarray(corrupt(rgb, severity=severity, corruption_name=corruption, **kwargs))
  out = out[top:top + h, left:left + w]
  return _to_grey(out) if channels == 1 else out.astype(np.uint8)


def generate(images: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
  """uint8 (N, H, W, C) images corrupted; image i depends only on (seed, corruption,
  severity, i) and the image itself."""
  if corruption not in CORRUPTIONS:
    raise ValueError(f"unknown corruption {corruption!r}; one of {', '.join(CORRUPTIONS)}")
  return np.stack([corrupt_image(x, corruption, severity, _image_seed(seed, corruption,
                                                                       severity, i))
                   for i, x in enumerate(images)]) if len(images) else images.copy()


def released_dir(archive_dir: str) -> Path | None:
  """The extracted CIFAR-10-C directory under the archive directory, if there is one."""
  if not archive_dir:
    return None
  path = Path(archive_dir, *RELEASED_DIR)
  return path if (path / "labels.npy").is_file() else None


def load_released(directory: Path, corruption: str, severity: int, examples: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The first `examples` (0 = all) images and labels of one corruption and severity
  (each file holds the test images once per severity, severity 1 first)."""
  images = np.load(directory / f"{corruption}.npy", mmap_mode="r")
  labels = np.load(directory / "labels.npy", mmap_mode="r")
  per_severity = len(labels) // len(SEVERITIES)
  start = (severity - 1) * per_severity
  stop = start + (min(examples, per_severity) if examples else per_severity)
  return np.asarray(images[start:stop]), np.asarray(labels[start:stop]).astype(np.int64)


def source_name(directory: Path | None) -> str:
  if directory is not None:
    return f"CIFAR-10-C (released files, {directory})"
  version = importlib.metadata.version(PACKAGE)
  return (f"generated from the test split by {PACKAGE} {version} (ImageNet-C severity "
          "constants; not comparable with published CIFAR-10-C numbers)")


def report(logits: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
           *, released: Path | None, seed: int, corruptions: Sequence[str] = CORRUPTIONS,
           severities: Sequence[int] = SEVERITIES) -> dict:
  """Accuracy per corruption and severity, per corruption, and the mean over all.
  `images`/`labels`: the (possibly shortened) test split, used when generating;
  `released`: the CIFAR-10-C directory, which then replaces them."""
  examples = int(len(labels))
  accuracy = {}
  for corruption in corruptions:
    # One call per corruption, its severities side by side: a few examples then fill one
    # padded evaluation batch instead of one batch per severity.
    sets = [load_released(released, corruption, severity, examples) if released is not None
            else (generate(images, corruption, severity, seed), labels)
            for severity in severities]
    predicted = logits(np.concatenate([x for x, _ in sets])).argmax(-1)
    bounds = np.cumsum([0] + [len(y) for _, y in sets])
    accuracy[corruption] = [float((predicted[a:b] == y).mean())
                            for (_, y), a, b in zip(sets, bounds[:-1], bounds[1:])]
  per_corruption = {name: float(np.mean(row)) for name, row in accuracy.items()}
  return {"source": source_name(released), "generated": released is None,
          "examples": examples, "severities": list(severities),
          "accuracy": accuracy, "per_corruption": per_corruption,
          "mean": float(np.mean(list(per_corruption.values())))}


# --- the report's section -----------------------------------------------------------------

def compute(p, x: Inputs) -> dict:
  """The section of predictor `p` on the first `robustness.examples` test images:
  CIFAR-10-C itself where it is on disk and the whole test split is evaluated,
  else generated."""
  data = x.config.data
  released = (released_dir(x.archive_dir)
              if data.name == "cifar10" and data.test_split == "test" else None)
  out = report(p.logits, x.few_images, x.few_labels, released=released, seed=x.config.seed)
  out["clean_accuracy"] = float((p.logits(x.few_images).argmax(-1) == x.few_labels).mean())
  logging.info("corruptions: mean accuracy %.4f (%s)", out["mean"], out["source"])
  return out


def table(corr: dict) -> Table:
  header = ["corruption"] + [f"severity {s}" for s in corr["severities"]] + ["mean"]
  rows = [[name.replace("_", " "), *(f"{100 * a:.2f}" for a in row),
           f"{100 * corr['per_corruption'][name]:.2f}"]
          for name, row in corr["accuracy"].items()]
  rows.append(["mean", *[""] * len(corr["severities"]), f"{100 * corr['mean']:.2f}"])
  note = (f"Accuracy % on {corr['examples']} test images; source: {corr['source']}. "
          f"Clean accuracy on the same images: {100 * corr['clean_accuracy']:.2f}%.")
  return "Corruption robustness", note, header, rows, 1


def corruption_figure(per_corruption: dict[str, float], clean: float, mean: float,
                      title: str):
  """Accuracy per corruption (mean over severities) with the clean accuracy and the mean."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel (slow)
  names = list(per_corruption)
  figure = Figure(figsize=(max(6.0, 0.55 * len(names) + 2), 4.2))
  ax = figure.add_subplot()
  ax.bar(np.arange(len(names)), [100 * per_corruption[n] for n in names], color="tab:blue")
  ax.axhline(100 * clean, color="black", linestyle="--", label=f"clean {100 * clean:.1f}%")
  ax.axhline(100 * mean, color="tab:red", linestyle=":", label=f"mean {100 * mean:.1f}%")
  ax.set_xticks(np.arange(len(names)), [n.replace("_", " ") for n in names], rotation=45,
                ha="right")
  ax.set_ylim(0, 100)
  ax.set_ylabel("accuracy % (mean over severities)")
  ax.set_title(title, fontsize=9)
  ax.legend(loc="lower left", fontsize=8)
  return figure


def figure(corr: dict):
  return corruption_figure(
      corr["per_corruption"], corr["clean_accuracy"], corr["mean"],
      ("CIFAR-10-C" if not corr["generated"] else "generated corruptions")
      + f", {corr['examples']} test images")


def source_label(corr: dict) -> str:
  """The result's source in a table cell."""
  return "generated" if corr.get("generated") else "CIFAR-10-C"


def _mean_cell(corr: dict | None) -> str:
  if not corr:
    return MISSING
  return f"{percent(corr['mean'])} ({source_label(corr)}, {corr['examples']:,} images)"


SECTION = ReportSection(
    "corruptions", compute, table, figure, "corruptions.png",
    "Accuracy under each corruption, averaged over the 5 severities.",
    compare_columns=(
        Column("corruption acc %", "corruption_accuracy", lambda c: c.get("mean"), percent),
        Column("corruptions", "corruption_source", source_label)),
    results_columns=(("mean corruption acc %", _mean_cell, False),))

