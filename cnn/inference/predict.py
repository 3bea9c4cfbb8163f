"""`python main.py --mode=predict --workdir=W --images=PATHS`: classify your own image files.

    python main.py --mode=predict --workdir=runs/r20 --images=photos/ --images='scans/*.jpg'
    python main.py --mode=predict --weights=results/weights/resnet20_mnist_seed0.safetensors \
        --images=digit.png

Each file is converted the way the dataset's images look (`images.py`), then
classified by the checkpoint `results.json` reports (or `--checkpoint=last`,
or a published weights file) exactly as evaluation classifies: same
normalisation, same test-time flip. The top-k classes with their softmax
probabilities are printed and written to `<out>/predictions.csv` and
`<out>/predictions.json` (all probabilities too); `<out>` is
`<workdir>/predictions` by default, `predictions/` for a weights file.

A file that cannot be used (missing, empty, not an image, unreadable,
truncated) gets one line on stderr and an `error` in both files; the others
are still classified. Exit status: 0 when every input was classified, 2 when
some (or all) could not be (nothing is written when none could).
"""
import csv
import io
import json
import sys

import numpy as np

from cnn import workdir as workdirs
from cnn.errors import UserError
from cnn.inference import images, predictor

CSV_NAME, JSON_NAME = "predictions.csv", "predictions.json"


def classify(p: predictor.Predictor, patterns: list[str], top_k: int) -> list[dict]:
  """One row per input, in input order: its top-k or its problem."""
  rows, arrays = [], []
  dataset = p.config.data.name
  for path, problem in images.find(patterns):
    row = {"path": path, "error": problem}
    if problem is None:
      try:
        original = images.read(path)
        arrays.append(images.convert(original, dataset, p.image_shape))
        row.update(width=original.width, height=original.height, mode=original.mode)
      except images.ImageError as e:
        row["error"] = str(e)
    rows.append(row)
  if not arrays:
    return rows
  probabilities = iter(p.probabilities(np.stack(arrays)))
  for row in rows:
    if row["error"] is None:
      row.update(_top(next(probabilities), p.class_names, top_k))
  return rows


def _top(probabilities: np.ndarray, names: tuple[str, ...], k: int) -> dict:
  order = np.argsort(-probabilities, kind="stable")[:k]
  return {"top": [{"class": names[i], "index": int(i), "probability": float(probabilities[i])}
                  for i in order],
          "probabilities": [float(q) for q in probabilities]}


def to_csv(rows: list[dict], top_k: int) -> str:
  """path, width, height, mode, then class/index/probability for ranks 1..k, then error."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  ranks = [f"{field}_{r}" for r in range(1, top_k + 1) for field in ("class", "index",
                                                                     "probability")]
  writer.writerow(["path", "width", "height", "mode", *ranks, "error"])
  for row in rows:
    top = [v for t in row.get("top", []) for v in (t["class"], t["index"],
                                                   f"{t['probability']:.6f}")]
    top += [""] * (len(ranks) - len(top))
    writer.writerow([row["path"], row.get("width", ""), row.get("height", ""),
                     row.get("mode", ""), *top, row["error"] or ""])
  return out.getvalue()


def to_json(rows: list[dict], p: predictor.Predictor) -> str:
  name = images.conversion_of(p.config.data.name, p.image_shape[-1])
  return json.dumps({
      "source": p.source, "model": p.config.model, "dataset": p.config.data.name,
      "class_names": list(p.class_names),
      "conversion": {"name": name,
                     "does": " ".join(images.CONVERSIONS[name].__doc__.split())},
      "predictions": rows}, indent=2) + "\n"


def _line(row: dict) -> str:
  return "  ".join([row["path"], *(f"{t['class']} {t['probability']:.3f}" for t in row["top"])])


def run(workdir: str | None, weights_file: str | None, patterns: list[str], which: str,
        top_k: int, out: str | None) -> int:
  """The `--mode=predict` command (a workdir's checkpoint or a weights file);
  returns the exit status."""
  if not patterns:
    raise UserError("no images given; pass --images=FILE, --images=FOLDER or "
                    "--images='GLOB' (repeat the flag for more)")
  if top_k < 1:
    raise UserError(f"--top_k={top_k}; give 1 or more")
  p = predictor.from_weights(weights_file) if weights_file else predictor.load(workdir, which)
  k = min(top_k, len(p.class_names))
  rows = classify(p, patterns, k)
  bad = [r for r in rows if r["error"]]
  for row in rows:
    if row["error"]:
      print(f"error: {row['path']}: {row['error']}", file=sys.stderr)
    else:
      print(_line(row))
  if len(bad) == len(rows):
    print(f"error: none of the {len(rows)} inputs could be classified; nothing written",
          file=sys.stderr)
    return 2
  folder = _out_folder(workdir, out)
  folder.mkdir(parents=True, exist_ok=True)
  (folder / CSV_NAME).write_text(to_csv(rows, k))
  (folder / JSON_NAME).write_text(to_json(rows, p))
  print(f"{len(rows) - len(bad)} of {len(rows)} images classified by {_describe(p.source)}; "
        f"wrote {folder / CSV_NAME} and {folder / JSON_NAME}")
  return 2 if bad else 0


def _out_folder(workdir: str | None, out: str | None):
  if out:
    return workdirs.resolve(out)
  return workdirs.Workdir.of(workdir).predictions if workdir else workdirs.resolve("predictions")


def _describe(source: dict) -> str:
  where = source.get("workdir") or source.get("weights")
  return f"{where} (step {source.get('step')}, epoch {source.get('epoch')})"
