"""Calibration metrics (cnn/robustness/calibration.py): hand-made logits with known
answers, then an independent implementation (Kumar et al.'s `uncertainty-calibration`,
whose `get_ece` is Guo et al.'s ECE and `get_ece_em` its equal-mass variant) and sklearn."""
import calibration as kumar  # the uncertainty-calibration package
import numpy as np
import pytest
import sklearn.metrics

from cnn.robustness import calibration


def logits_of(probabilities) -> np.ndarray:
  return np.log(np.asarray(probabilities, np.float64))


# Confidences 0.95, 0.95, 0.65, 0.65 (two classes); the first 0.95 and both 0.65 are right.
HAND_PROBS = [[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.35, 0.65]]
HAND_LABELS = np.array([0, 1, 1, 1])


def test_ece_by_hand():
  # Bin (14/15, 1]: accuracy 1/2, confidence 0.95 -> gap 0.45, half the examples.
  # Bin (9/15, 10/15]: accuracy 1, confidence 0.65 -> gap 0.35, the other half.
  assert calibration.ece(np.array(HAND_PROBS), HAND_LABELS) == pytest.approx(0.40)


def test_adaptive_ece_by_hand():
  # Two equal-mass groups: the 0.65s (accuracy 1, gap 0.35), the 0.95s (accuracy 1/2, gap 0.45).
  assert calibration.adaptive_ece(np.array(HAND_PROBS), HAND_LABELS, num_bins=2) == (
      pytest.approx(0.40))
  # With one group: |mean accuracy 3/4 - mean confidence 0.8| = 0.05.
  assert calibration.adaptive_ece(np.array(HAND_PROBS), HAND_LABELS, num_bins=1) == (
      pytest.approx(0.05))


def test_nll_and_brier_by_hand():
  logits = logits_of(HAND_PROBS)
  assert calibration.nll(logits, HAND_LABELS) == pytest.approx(
      -(np.log(0.95) + np.log(0.05) + 2 * np.log(0.65)) / 4)
  # Per example sum_k (p_k - onehot_k)^2: 2 * 0.05^2, 2 * 0.95^2, 2 * 0.35^2 twice.
  assert calibration.brier(np.array(HAND_PROBS), HAND_LABELS) == pytest.approx(
      (2 * 0.05**2 + 2 * 0.95**2 + 4 * 0.35**2) / 4)


def test_perfectly_calibrated_predictions_have_zero_ece():
  # 10 examples at confidence 0.7 (7 right), 10 at 0.9 (9 right), 3 classes.
  probs, labels = [], []
  for confidence, right in ((0.7, 7), (0.9, 9)):
    rest = (1 - confidence) / 2
    for i in range(10):
      probs.append([confidence, rest, rest])
      labels.append(0 if i < right else 1)
  probs, labels = np.array(probs), np.array(labels)
  assert calibration.ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
  assert calibration.adaptive_ece(probs, labels, num_bins=2) == pytest.approx(0.0, abs=1e-12)


def test_reliability_bins_put_confidence_one_in_the_last_bin_and_count_everything():
  probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8], [0.01, 0.99]])
  bins = calibration.reliability_bins(probs, np.array([0, 0, 1, 0]))
  assert sum(bins["count"]) == 4
  assert bins["count"][-1] == 2  # 1.0 and 0.99
  assert bins["accuracy"][-1] == pytest.approx(0.5)
  assert bins["count"][7] == 1  # 0.5 lies in (7/15, 8/15]
  assert bins["accuracy"][0] is None  # empty bins have none (JSON null), not 0


def random_logits(seed: int, n: int = 3000, classes: int = 10, scale: float = 3.0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, classes)) * scale
  labels = np.array([rng.choice(classes, p=p) for p in calibration.softmax(logits / 1.7)])
  return logits, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_and_adaptive_ece_match_an_independent_implementation(seed):
  logits, labels = random_logits(seed)
  probs = calibration.softmax(logits)
  assert calibration.ece(probs, labels) == pytest.approx(
      kumar.get_ece(probs, labels, num_bins=15), abs=1e-9)
  assert calibration.adaptive_ece(probs, labels) == pytest.approx(
      kumar.get_ece_em(probs, labels, num_bins=15), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_nll_and_brier_match_sklearn(seed):
  logits, labels = random_logits(seed)
  probs = calibration.softmax(logits)
  assert calibration.nll(logits, labels) == pytest.approx(
      sklearn.metrics.log_loss(labels, probs, labels=range(10)), rel=1e-9)
  # sklearn's multi-class Brier score is Brier's sum over classes, averaged over examples.
  assert calibration.brier(probs, labels) == pytest.approx(
      sklearn.metrics.brier_score_loss(labels, probs, labels=range(10)), rel=1e-9)


def test_temperature_recovers_the_scale_of_overconfident_logits():
  rng = np.random.default_rng(0)
  true_logits = rng.normal(size=(20000, 10)) * 2
  labels = np.array([rng.choice(10, p=p) for p in calibration.softmax(true_logits)])
  temperature = calibration.fit_temperature(3.0 * true_logits, labels)
  assert temperature == pytest.approx(3.0, rel=0.05)
  # It is the minimiser: a grid around it never does better.
  best = calibration.nll(3.0 * true_logits / temperature, labels)
  for t in np.linspace(1.5, 4.5, 31):
    assert calibration.nll(3.0 * true_logits / t, labels) >= best - 1e-9


def test_report_fits_on_the_held_out_split_only_and_says_when_there_is_none():
  logits, labels = random_logits(3)
  held_logits, held_labels = random_logits(4)
  report = calibration.report(logits, labels, (held_logits, held_labels), "train[45000:]")
  assert report["temperature"] == pytest.approx(
      calibration.fit_temperature(held_logits, held_labels))
  assert report["fitted_on"] == "train[45000:]"
  assert report["test_scaled"]["accuracy"] == report["test"]["accuracy"]  # T keeps the argmax
  # The logits are 1.7x too confident for their labels: scaling lowers test NLL and ECE.
  assert report["test_scaled"]["nll"] < report["test"]["nll"]
  assert report["test_scaled"]["ece"] < report["test"]["ece"]
  none = calibration.report(logits, labels, None, "")
  assert none["temperature"] is None and "test_scaled" not in none
  assert "never fitted on test" in none["temperature_note"]
