"""How well a model knows when it is wrong: calibration metrics and temperature scaling.

Pure numpy on (N, classes) logits and (N,) integer labels:

  ece             expected calibration error, Guo et al. 2017 ("On Calibration of Modern
                  Neural Networks", eq. 3): top-label confidence in 15 equal-width bins
                  (lo, hi], sum over bins of |accuracy - mean confidence| weighted by the
                  fraction of examples in the bin.
  adaptive_ece    the same with 15 equal-mass bins (sorted confidences split into groups of
                  equal size, numpy's `array_split`), Nixon et al. 2019's adaptive
                  calibration error for the top label; less biased when most predictions
                  sit near confidence 1, as they do on MNIST and CIFAR.
  nll             mean negative log-likelihood of the true class (nats).
  brier           Brier 1950's multi-class score: mean over examples of
                  sum_k (p_k - onehot_k)^2, in [0, 2].
  fit_temperature the T > 0 minimising the NLL of logits / T on a held-out split
                  (Guo et al. 2017, section 4.2), by a bounded 1-D search on log T
                  (`scipy.optimize.minimize_scalar`); never fitted on the test split.

`tests/test_calibration.py` checks each on hand-made logits with known answers and
against an independent implementation (Kumar et al.'s `uncertainty-calibration`, sklearn).
"""
from typing import Sequence

import numpy as np
from scipy import optimize, special

from cnn.robustness.section import Column, Inputs, ReportSection, Table, percent

NUM_BINS = 15
# Search interval for the temperature: 1/20 .. 20 covers every network we train.
LOG_T_BOUNDS = (-3.0, 3.0)


def log_softmax(logits: np.ndarray) -> np.ndarray:
  """scipy's, in float64 (stable for large logits)."""
  return special.log_softmax(np.asarray(logits, np.float64), axis=-1)


def softmax(logits: np.ndarray) -> np.ndarray:
  """scipy's, in float64 (the predictor's too)."""
  return special.softmax(np.asarray(logits, np.float64), axis=-1)


def confidence_and_correct(probabilities: np.ndarray, labels: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
  """The top-label probability of each example and whether that label is right."""
  probabilities = np.asarray(probabilities, np.float64)
  predictions = probabilities.argmax(axis=-1)
  return probabilities.max(axis=-1), (predictions == np.asarray(labels)).astype(np.float64)


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS
                     ) -> dict[str, list]:
  """Equal-width bins (lo, hi] of the top-label confidence: per bin the number of
  examples, their accuracy and mean confidence (None for an empty bin: valid JSON). The
  reliability diagram draws these; `ece` sums them."""
  confidence, correct = confidence_and_correct(probabilities, labels)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # Bin b holds (edges[b], edges[b+1]]: a confidence exactly on an edge goes to the lower bin.
  index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
  counts = np.bincount(index, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    accuracy = np.bincount(index, correct, minlength=num_bins) / counts
    mean_confidence = np.bincount(index, confidence, minlength=num_bins) / counts
  as_list = lambda a: [None if np.isnan(v) else float(v) for v in a]
  return {"edges": edges.tolist(), "count": counts.tolist(), "accuracy": as_list(accuracy),
          "confidence": as_list(mean_confidence)}


def _gap(groups_count, groups_accuracy, groups_confidence) -> float:
  count = np.asarray(groups_count, np.float64)
  filled = count > 0
  gaps = np.abs(np.asarray(groups_accuracy, float)[filled]
                - np.asarray(groups_confidence, float)[filled])
  return float((count[filled] * gaps).sum() / count.sum()) if count.sum() else 0.0


def ece(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> float:
  bins = reliability_bins(probabilities, labels, num_bins)
  return _gap(bins["count"], bins["accuracy"], bins["confidence"])


def adaptive_ece(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS
                 ) -> float:
  confidence, correct = confidence_and_correct(probabilities, labels)
  order = np.argsort(confidence, kind="stable")
  groups = [g for g in np.array_split(order, min(num_bins, len(order))) if len(g)]
  return _gap([len(g) for g in groups], [correct[g].mean() for g in groups],
              [confidence[g].mean() for g in groups])


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
  labels = np.asarray(labels)
  return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
  probabilities = np.asarray(probabilities, np.float64)
  onehot = np.eye(probabilities.shape[-1])[np.asarray(labels)]
  return float(((probabilities - onehot) ** 2).sum(axis=-1).mean())


def metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Accuracy and every calibration metric of one set of logits."""
  probabilities = softmax(logits)
  return {"accuracy": float((probabilities.argmax(-1) == np.asarray(labels)).mean()),
          "ece": ece(probabilities, labels), "adaptive_ece": adaptive_ece(probabilities, labels),
          "nll": nll(logits, labels), "brier": brier(probabilities, labels)}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
  """argmin_T NLL(logits / T), T in [e^-3, e^3]."""
  logits = np.asarray(logits, np.float64)
  result = optimize.minimize_scalar(lambda log_t: nll(logits / np.exp(log_t), labels),
                                    bounds=LOG_T_BOUNDS, method="bounded",
                                    options={"xatol": 1e-6})
  return float(np.exp(result.x))


def report(test_logits: np.ndarray, test_labels: np.ndarray,
           held_out: tuple[np.ndarray, np.ndarray] | None, held_out_name: str) -> dict:
  """The calibration section of the report: test metrics, and, when a held-out
  split exists, the temperature fitted on it with the test metrics after scaling."""
  out = {"num_bins": NUM_BINS, "test": metrics(test_logits, test_labels),
         "reliability": reliability_bins(softmax(test_logits), test_labels)}
  if held_out is None:
    out["temperature"] = None
    out["temperature_note"] = ("no held-out split (config.data.validation_split is empty, e.g. the "
                               "paper protocol): temperature scaling is never fitted on test")
    return out
  temperature = fit_temperature(*held_out)
  scaled = np.asarray(test_logits, np.float64) / temperature
  out.update({"temperature": temperature, "fitted_on": held_out_name,
              "test_scaled": metrics(scaled, test_labels),
              "reliability_scaled": reliability_bins(softmax(scaled), test_labels)})
  return out


# --- the report's section -----------------------------------------------------------------

def compute(p, x: Inputs) -> dict:
  """The section of predictor `p`: its test logits (the report's, if computed),
  and the held-out split's for the temperature."""
  logits = p.logits(x.images) if x.test_logits is None else x.test_logits
  held = None if x.held_out is None else (p.logits(x.held_out[0]), x.held_out[1])
  return report(logits, x.labels, held, x.config.data.validation_split)


_PERCENT = lambda v: f"{100 * v:.2f}%"  # noqa: E731
TABLE_ROWS = (("accuracy", "accuracy", _PERCENT), ("ece", "ECE (15 bins)", _PERCENT),
              ("adaptive_ece", "adaptive ECE (15 bins)", _PERCENT),
              ("nll", "NLL (nats)", lambda v: f"{v:.4f}"),
              ("brier", "Brier score", lambda v: f"{v:.4f}"))


def table(cal: dict) -> Table:
  scaled = cal.get("test_scaled")
  header = ["metric (test split)", "as trained"] + (
      [f"temperature-scaled (T = {cal['temperature']:.3f})"] if scaled else [])
  rows = [[label, fmt(cal["test"][key])] + ([fmt(scaled[key])] if scaled else [])
          for key, label, fmt in TABLE_ROWS]
  note = (f"Temperature fitted on {cal['fitted_on']} (never on test)." if scaled
          else cal.get("temperature_note", ""))
  return "Calibration", note, header, rows, 1


def reliability_figure(panels: Sequence[tuple[str, dict]]):
  """One reliability diagram per (title, `calibration.reliability_bins` dict): the
  accuracy of each confidence bin against the diagonal of perfect calibration, with
  the gap to each bin's mean confidence shaded and the bin sizes below."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel (slow)
  figure = Figure(figsize=(4.2 * len(panels), 5.2))
  grid = figure.add_gridspec(2, len(panels), height_ratios=(3, 1), hspace=0.08)
  for column, (title, bins) in enumerate(panels):
    top = figure.add_subplot(grid[0, column])
    bottom = figure.add_subplot(grid[1, column], sharex=top)
    edges = np.asarray(bins["edges"])
    width = np.diff(edges)
    count = np.asarray(bins["count"], float)
    filled = count > 0
    accuracy = np.nan_to_num(np.asarray(bins["accuracy"], float))
    confidence = np.nan_to_num(np.asarray(bins["confidence"], float))
    top.bar(edges[:-1][filled], accuracy[filled], width[filled], align="edge",
            color="tab:blue", edgecolor="black", label="accuracy")
    top.bar(edges[:-1][filled], (confidence - accuracy)[filled], width[filled],
            bottom=accuracy[filled], align="edge", color="tab:red", alpha=0.3,
            edgecolor="tab:red", hatch="//", label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title)
    top.legend(loc="upper left", fontsize=8)
    top.tick_params(labelbottom=False)
    bottom.bar(edges[:-1], count / max(count.sum(), 1), width, align="edge",
               color="grey", edgecolor="black")
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence (top label)")
    bottom.set_ylabel("fraction")
  return figure


def figure(cal: dict):
  panels = [("as trained", cal["reliability"])]
  if cal.get("reliability_scaled"):
    panels.append((f"temperature-scaled (T = {cal['temperature']:.3f})",
                   cal["reliability_scaled"]))
  return reliability_figure(panels)


def _test(cal: dict) -> dict:
  return cal.get("test") or {}


def _scaled_ece_cell(cal: dict | None) -> str:
  """The ECE after temperature scaling, with T (or why there is none)."""
  if not cal:
    return percent(None)
  temperature = f" (T = {cal['temperature']:.2f})" if cal.get("temperature") else ""
  if cal.get("temperature") is None and cal.get("temperature_note"):
    temperature = " (no held-out split to fit T on)"
  return percent((cal.get("test_scaled") or {}).get("ece")) + temperature


SECTION = ReportSection(
    "calibration", compute, table, figure, "reliability.png",
    "Reliability diagrams on the test set (15 equal-width confidence bins), before and "
    "after temperature scaling.",
    compare_columns=(
        Column("ECE %", "ece", lambda c: _test(c).get("ece"), percent),
        Column("ECE % (T-scaled)", "ece_scaled", lambda c: (c.get("test_scaled") or {}).get("ece"),
               percent),
        Column("NLL", "nll", lambda c: _test(c).get("nll"), lambda v: f"{v:.4f}")),
    results_columns=(
        ("test acc %", lambda c: percent(_test(c or {}).get("accuracy")), True),
        ("ECE %", lambda c: percent(_test(c or {}).get("ece")), True),
        ("ECE % after temperature scaling", _scaled_ece_cell, True),
        ("NLL", lambda c: f"{_test(c).get('nll', 0):.4f}" if c else percent(None), True)))

