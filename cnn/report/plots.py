"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

Each function takes plain numpy data and returns a `Figure`; nothing here
knows about checkpoints or files except `save`. `Figure` objects are used
instead of `pyplot` so no global state or display backend is involved.
"""
import io
from typing import Sequence

from etils import epath

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ANNOTATE_UP_TO = 20  # classes; beyond this the cell numbers are unreadable
MAX_PANEL_INCHES = 20.0  # CIFAR-100's matrix would otherwise be 5500 pixels wide
CHANNELS_SHOWN = 8


def save(figure: Figure, path: epath.Path) -> None:
  """PNG bytes rendered in memory, then written through epath (any workdir URI)."""
  FigureCanvasAgg(figure)
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
  epath.Path(path).write_bytes(buffer.getvalue())


def _show_image(ax, image: np.ndarray) -> None:
  """uint8 HWC; single-channel images in grey."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])


def _matrix_panel(ax, matrix: np.ndarray, class_names: Sequence[str], title: str,
                  fmt: str) -> None:
  image = ax.imshow(matrix, cmap="Blues")
  ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  ticks = np.arange(len(class_names))
  small = len(class_names) > ANNOTATE_UP_TO
  ax.set_xticks(ticks, class_names, rotation=45 if not small else 90, ha="right",
                fontsize=6 if small else 9)
  ax.set_yticks(ticks, class_names, fontsize=6 if small else 9)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  if small:
    return
  threshold = matrix.max() / 2
  for (row, col), value in np.ndenumerate(matrix):
    ax.text(col, row, format(value, fmt), ha="center", va="center", fontsize=7,
            color="white" if value > threshold else "black")


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str]) -> Figure:
  """Counts and the row-normalised matrix (each row is one true class, so the
  diagonal is the recall) side by side."""
  size = min(max(6.0, 0.55 * len(class_names)), MAX_PANEL_INCHES)
  figure = Figure(figsize=(2 * size + 1, size))
  count_ax, rate_ax = figure.subplots(1, 2)
  rows = cm.sum(axis=1, keepdims=True)
  normalized = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows != 0)
  _matrix_panel(count_ax, cm, class_names, "confusion matrix (counts)", "d")
  _matrix_panel(rate_ax, normalized, class_names, "row-normalised (recall on diagonal)", ".2f")
  figure.tight_layout()
  return figure


def _series(history: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
  points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
  return [e for e, _ in points], [v for _, v in points]


def curves_figure(history: Sequence[dict], steps: Sequence[dict] = (),
                  num_classes: int | None = None) -> Figure:
  """Accuracy and loss, train vs validation per epoch; the learning rate on
  its own panel because its scale has nothing to do with the others; with
  `steps` (`steps.jsonl`), the batch losses by step, where a spike that the
  epoch means hide shows."""
  figure = Figure(figsize=(20 if steps else 15, 4))
  panels = figure.subplots(1, 4 if steps else 3)
  for ax, metric in zip(panels, ("accuracy", "loss")):
    for split, style in (("train", "o-"), ("val", "s--")):
      epochs, values = _series(history, f"{split}_{metric}")
      if epochs:
        label = "train" if split == "train" else "validation"
        ax.plot(epochs, values, style, label=label)
    ax.set_title(metric)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
  epochs, rates = _series(history, "learning_rate")
  panels[2].plot(epochs, rates, "o-", color="tab:green")
  panels[2].set_title("learning rate (end of epoch)")
  panels[2].set_xlabel("epoch")
  panels[2].grid(alpha=0.3)
  for ax in panels:
    ax.xaxis.get_major_locator().set_params(integer=True)
  if steps:
    batch_loss_panel(panels[3], steps, num_classes)
  figure.tight_layout()
  return figure


def batch_loss_panel(ax, steps: Sequence[dict], num_classes: int | None,
                     colour: str | None = None, label: str | None = None) -> None:
  """Mean batch loss per window of steps (`steps.jsonl`), its min-max band,
  and chance (ln K) where `num_classes` is given."""
  x = [r["step"] for r in steps]
  prefix = f"{label}: " if label else ""
  ax.fill_between(x, [r["loss_min"] for r in steps], [r["loss_max"] for r in steps],
                  alpha=0.3, color=colour, label=f"{prefix}min-max of the window")
  ax.plot(x, [r["loss"] for r in steps], "-", color=colour,
          label=f"{prefix}mean of {steps[0]['steps']} steps")
  if num_classes:
    ax.axhline(np.log(num_classes), color="gray", linestyle=":",
               label=f"chance: ln {num_classes}")
  ax.set_yscale("log")
  ax.set_title("training loss by step (batches)")
  ax.set_xlabel("step")
  ax.grid(alpha=0.3)
  ax.legend()


def misclassified_figure(images: np.ndarray, true_names: Sequence[str],
                         predicted_names: Sequence[str], confidences: Sequence[float],
                         columns: int = 8) -> Figure:
  """A grid of test images with their true label, the prediction and its
  softmax probability."""
  rows = max(1, -(-len(images) // columns))
  figure = Figure(figsize=(1.9 * columns, 2.3 * rows))
  axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
  for ax in axes:
    ax.axis("off")
  for ax, image, true, predicted, confidence in zip(
      axes, images, true_names, predicted_names, confidences):
    _show_image(ax, image)
    ax.axis("on")
    ax.set_title(f"true: {true}\npred: {predicted} ({confidence:.0%})", fontsize=9,
                 color="darkred")
  if not len(images):
    axes[0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
  figure.suptitle("most confident mistakes on the test set")
  figure.tight_layout()
  return figure


def strongest_channels(maps: np.ndarray, k: int = CHANNELS_SHOWN) -> np.ndarray:
  """The k channels with the largest mean |activation|: the ones that respond
  to this image, rather than the first k, which may be silent."""
  strength = np.abs(maps).mean(axis=(0, 1))
  return np.argsort(-strength, kind="stable")[:k]


def activations_figure(image: np.ndarray, layers: Sequence[tuple[str, np.ndarray]],
                       title: str, channels: int = CHANNELS_SHOWN) -> Figure:
  """The input image, then one row per layer with its strongest channels
  (each channel on its own colour scale)."""
  rows = 1 + len(layers)
  figure = Figure(figsize=(1.6 * (channels + 1), 1.7 * rows))
  axes = figure.subplots(rows, channels + 1, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  _show_image(axes[0, 0], image)
  axes[0, 0].axis("on")
  axes[0, 0].set_title("input", fontsize=9)
  for row, (name, maps) in enumerate(layers, start=1):
    height, width, depth = maps.shape
    label = axes[row, 0]
    label.text(0.95, 0.5, f"{name}\n{height}x{width}x{depth}", ha="right", va="center",
               fontsize=9, transform=label.transAxes)
    for col, channel in enumerate(strongest_channels(maps, channels), start=1):
      ax = axes[row, col]
      ax.imshow(maps[..., channel], cmap="viridis")
      ax.set_title(f"ch {channel}", fontsize=7)
  figure.suptitle(title)
  figure.tight_layout()
  return figure
