"""`main.py --mode=evaluate`: the analysis report of a trained workdir.

Loads the checkpoint whose test accuracy `results.json` reports (best by
validation; the final one under the paper protocol) as a `cnn.inference.predictor`
(evaluation variables only), predicts the whole test split once, and
writes `<workdir>/report/`: per-class metrics (JSON + markdown), the confusion
matrix, training curves, the most confidently misclassified test images,
feature maps for one test image, calibration, corruption and adversarial
robustness (`cnn/robustness`, switched by `config.robustness`; into
`robustness.json`, `reliability.png`, `corruptions.png`), and an `index.html`
that shows them all.

The metric functions are pure numpy so they can be checked against hand-made
confusion matrices and sklearn; figures live in `cnn/report/plots.py` and the
markdown/HTML text in `cnn/report/pages.py`.
"""
import json
import logging
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from cnn import datasets, metric_writers, robustness, seeds as seedlib
from cnn.report import pages as report_pages, plots
from cnn.inference import predictor
from cnn import workdir as workdirs
from cnn import workdir_lock
from cnn.errors import UserError

NUM_MISCLASSIFIED = 24
NUM_CONFUSED_PAIRS = 10


# --- metrics (pure numpy) -------------------------------------------------------------------

def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int
                     ) -> np.ndarray:
  """Counts [true, predicted], sklearn's orientation: row i = examples of class i."""
  labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
  return flat.reshape(num_classes, num_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """0 where the denominator is 0, as sklearn does with `zero_division=0`: a
  class that is never predicted has precision 0, not NaN."""
  numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
  out = np.zeros_like(numerator)
  np.divide(numerator, denominator, out=out, where=denominator != 0)
  return out


def precision_recall_f1(cm: np.ndarray) -> dict[str, np.ndarray]:
  """Per-class precision, recall, F1 and support from a confusion matrix."""
  true_positives = np.diag(cm).astype(float)
  support = cm.sum(axis=1)
  precision = _safe_divide(true_positives, cm.sum(axis=0))
  recall = _safe_divide(true_positives, support)
  f1 = _safe_divide(2 * precision * recall, precision + recall)
  return {"precision": precision, "recall": recall, "f1-score": f1, "support": support}


def classification_report(cm: np.ndarray, class_names: list[str]) -> dict[str, Any]:
  """sklearn's `classification_report(output_dict=True)` layout, per class
  under `classes` so the summary keys never collide with a class name."""
  per_class = precision_recall_f1(cm)
  support = per_class["support"]
  total = int(support.sum())
  metrics = ("precision", "recall", "f1-score")

  def average(weights: np.ndarray) -> dict[str, float]:
    averaged = {m: float(np.average(per_class[m], weights=weights)) for m in metrics}
    return {**averaged, "support": total}

  return {
      "classes": {name: {**{m: float(per_class[m][i]) for m in metrics},
                         "support": int(support[i])} for i, name in enumerate(class_names)},
      "accuracy": float(np.trace(cm) / total) if total else 0.0,
      "macro avg": average(np.ones(len(class_names))),
      "weighted avg": average(support) if total else average(np.ones(len(class_names))),
  }


def most_confused_pairs(cm: np.ndarray, class_names: list[str], k: int = NUM_CONFUSED_PAIRS
                        ) -> list[dict[str, Any]]:
  """The k largest off-diagonal cells: which class is mistaken for which."""
  errors = cm.astype(np.int64).copy()
  np.fill_diagonal(errors, 0)
  order = np.argsort(-errors, axis=None, kind="stable")[:k]
  pairs = []
  for true, predicted in zip(*np.unravel_index(order, cm.shape)):
    count = int(errors[true, predicted])
    if count == 0:
      break
    pairs.append({"true": class_names[true], "predicted": class_names[predicted],
                  "count": count,
                  "fraction_of_true": count / max(int(cm[true].sum()), 1)})
  return pairs


def most_confident_errors(labels: np.ndarray, probabilities: np.ndarray, k: int
                          ) -> np.ndarray:
  """Indices of up to k misclassified examples, most confident first: the
  errors a model is surest about say more than random ones."""
  predictions = probabilities.argmax(axis=-1)
  wrong = np.flatnonzero(predictions != labels)
  confidence = probabilities[wrong, predictions[wrong]]
  return wrong[np.argsort(-confidence, kind="stable")][:k]


# --- feature maps -------------------------------------------------------------------------

NOT_FEATURE_LAYERS = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.Dropout, nn.Dense)


def _is_feature_layer(module: nn.Module, method_name: str) -> bool:
  """The model's top-level layers (convs, blocks, stages) without norms,
  dropout and the classifier: their outputs are the feature maps a reader
  wants, whatever the model family calls them."""
  return (method_name == "__call__" and len(module.path) == 1
          and not isinstance(module, NOT_FEATURE_LAYERS))


def capture_feature_maps(p: predictor.Predictor, image: np.ndarray
                         ) -> list[tuple[str, np.ndarray]]:
  """(layer name, [H, W, C] output) of every feature layer, in call order,
  for one normalised image, through flax's `capture_intermediates`."""
  _, captured = p.model.apply(
      p.variables, image[None], train=False,
      capture_intermediates=_is_feature_layer, mutable=["intermediates"])
  layers = []
  for name, outputs in captured["intermediates"].items():
    output = np.asarray(jax.device_get(outputs["__call__"][0]))
    if output.ndim == 4:
      layers.append((name, output[0]))
  return layers


def stage_outputs(layers: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
  """The first layer, then the last layer at each spatial resolution: the
  first conv and the output of every stage, whatever the model calls them
  (ResNet stages end with a block, VGG stages with the conv before a pool)."""
  if not layers:
    return []
  chosen = [layers[0]]
  for i, (name, maps) in enumerate(layers):
    is_last_at_size = i + 1 == len(layers) or layers[i + 1][1].shape[:2] != maps.shape[:2]
    if is_last_at_size and name != chosen[-1][0]:
      chosen.append((name, maps))
  return chosen


# --- orchestration --------------------------------------------------------------------------

def read_jsonl(path, fallback: list[dict]) -> list[dict]:
  """The records of a JSON-lines file of the workdir (`Workdir.metrics`: per
  epoch; `Workdir.steps`: per window of steps), else `fallback`."""
  return metric_writers.read_jsonl(path) if path.is_file() else fallback


def read_results(workdir: str) -> dict:
  path = workdirs.Workdir.of(workdir).results
  return json.loads(path.read_text()) if path.is_file() else {}


def check_image_index(index: int, num_images: int) -> int:
  if not 0 <= index < num_images:
    raise UserError(f"config.eval.report_image_index={index} is outside the test split "
                    f"(0..{num_images - 1}); e.g. --config.eval.report_image_index=0")
  return index


def evaluation_splits(config: ml_collections.ConfigDict
                      ) -> tuple[tuple[np.ndarray, np.ndarray], tuple | None]:
  """The config's test split (uint8 images, labels) and its held-out validation
  split (None when there is none), for temperature scaling; no training split."""
  source = datasets.open_data(config.data)
  held_out = (source.load_split(config.data.validation_split) if config.data.validation_split
              else None)
  return source.load_split(config.data.test_split), held_out


def robustness_figures(robust: dict) -> dict:
  """file name -> figure, of each measured section that has one (ReportSection.figure)."""
  return {section.figure_file: section.figure(robust[name])
          for name, section in robustness.SECTIONS.items()
          if section.figure is not None and robust.get(name)}


def write_report(config: ml_collections.ConfigDict, workdir: "str | workdirs.Workdir") -> dict:
  """Writes `<workdir>/report/` from the checkpoint `results.json` reports
  (best by validation; the final one under the paper protocol) and returns
  the classification report. Reads only the evaluation variables and the
  test split (`cnn.inference.predictor`)."""
  workdir = workdirs.Workdir.of(workdir)
  workdir_lock.check_no_trainer(workdir)  # not while a trainer writes it
  p = predictor.load(workdir, "best")
  p.check_config(config)
  (images, labels), held_out = evaluation_splits(config)
  index = check_image_index(int(config.eval.report_image_index), len(labels))
  logits = p.logits(images)
  probabilities = predictor.softmax(logits)
  predictions = probabilities.argmax(axis=-1)
  names = list(p.class_names)
  cm = confusion_matrix(labels, predictions, len(names))
  checkpoint_history = list(p.history)
  report = {
      "model": config.model, "dataset": config.data.name, "num_examples": int(len(labels)),
      "checkpoint": {k: p.source.get(k) for k in ("epoch", "step", "val_accuracy")},
      **classification_report(cm, names),
      "most_confused": most_confused_pairs(cm, names),
      "activations_image": {"index": index, "true": names[labels[index]],
                            "predicted": names[predictions[index]],
                            "confidence": float(probabilities[index].max())},
  }
  robust = robustness.evaluate(p, config, (images, labels), held_out, test_logits=logits,
                               archive_dir=datasets.resolve_archive_dir(config.data.archive_dir))
  layers = stage_outputs(capture_feature_maps(p, p.normalize(images[index:index + 1])[0]))
  if jax.process_index() != 0:
    return report

  out = workdir.report
  out.mkdir(parents=True, exist_ok=True)
  (out / "classification_report.json").write_text(json.dumps(report, indent=2) + "\n")
  (out / "robustness.json").write_text(json.dumps(robust, indent=2) + "\n")
  (out / "classification_report.md").write_text(
      report_pages.markdown({**report, "robustness": robust}))
  wrong = most_confident_errors(labels, probabilities, NUM_MISCLASSIFIED)
  figures = {
      "curves.png": plots.curves_figure(
          read_jsonl(workdir.metrics, checkpoint_history),
          read_jsonl(workdir.steps, []), len(names)),
      "confusion_matrix.png": plots.confusion_matrix_figure(cm, names),
      "misclassified.png": plots.misclassified_figure(
          images[wrong], [names[i] for i in labels[wrong]],
          [names[i] for i in predictions[wrong]], probabilities[wrong, predictions[wrong]]),
      "activations.png": plots.activations_figure(
          images[index], layers, report_pages.activations_title(report["activations_image"])),
  }
  figures.update(robustness_figures(robust))
  for filename, figure in figures.items():
    plots.save(figure, out / filename)
  (out / "index.html").write_text(report_pages.html(
      {**report, "robustness": robust}, read_results(workdir), config.to_dict(),
      list(figures)))
  logging.info("report written to %s (test accuracy %.4f)", out, report["accuracy"])
  return report


def write_reports(config: ml_collections.ConfigDict, workdir: "str | workdirs.Workdir") -> None:
  """--mode=evaluate: the run's report, or for a sweep (`config.sweep.seeds`)
  each seed's report in its own workdir."""
  if not config.sweep.seeds:
    write_report(config, workdir)
    return
  workdir = workdirs.Workdir.of(workdir)
  for s in seedlib.parse_seeds(config.sweep.seeds):
    write_report(seedlib.seed_config(config, s), workdir.seed(s))
