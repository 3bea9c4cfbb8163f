"""The analysis report: metric functions against hand-computed numbers and
sklearn, feature-map capture on real models, then `--mode=evaluate` and
`python -m cnn.report.compare` end to end on two tiny real MNIST runs, and the HTML
rendered by headless Chromium."""
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import sklearn.metrics
from PIL import Image

from cnn.report import analysis as report, pages as report_pages, plots
from cnn.inference import predictor
from cnn.errors import UserError
from cnn.models import create_model

# Its module-scoped fixtures are made once: the whole file runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_report")

REPO = Path(__file__).resolve().parents[1]
PNGS = ("confusion_matrix.png", "curves.png", "misclassified.png", "activations.png")

# Rows are true classes, columns predictions: 16 examples, 12 right.
HAND_CM = np.array([[5, 1, 0],
                    [2, 3, 1],
                    [0, 0, 4]])


def labels_from_cm(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  pairs = [(t, p) for (t, p), n in np.ndenumerate(cm) for _ in range(n)]
  return np.array([t for t, _ in pairs]), np.array([p for _, p in pairs])


def test_confusion_matrix_counts_true_rows_predicted_columns():
  labels, predictions = labels_from_cm(HAND_CM)
  np.testing.assert_array_equal(report.confusion_matrix(labels, predictions, 3), HAND_CM)


def test_precision_recall_f1_by_hand():
  m = report.precision_recall_f1(HAND_CM)
  np.testing.assert_allclose(m["precision"], [5 / 7, 3 / 4, 4 / 5])  # diagonal / column sums
  np.testing.assert_allclose(m["recall"], [5 / 6, 3 / 6, 4 / 4])  # diagonal / row sums
  np.testing.assert_allclose(m["f1-score"], [10 / 13, 6 / 10, 8 / 9])  # 2TP / (2TP+FP+FN)
  np.testing.assert_array_equal(m["support"], [6, 6, 4])


def test_classification_report_by_hand():
  r = report.classification_report(HAND_CM, ["a", "b", "c"])
  assert list(r["classes"]) == ["a", "b", "c"]
  assert r["classes"]["b"] == pytest.approx(
      {"precision": 0.75, "recall": 0.5, "f1-score": 0.6, "support": 6})
  assert r["accuracy"] == 12 / 16
  assert r["macro avg"] == pytest.approx({
      "precision": (5 / 7 + 3 / 4 + 4 / 5) / 3, "recall": (5 / 6 + 1 / 2 + 1) / 3,
      "f1-score": (10 / 13 + 6 / 10 + 8 / 9) / 3, "support": 16})
  assert r["weighted avg"] == pytest.approx({
      "precision": (6 * 5 / 7 + 6 * 3 / 4 + 4 * 4 / 5) / 16, "recall": 12 / 16,
      "f1-score": (6 * 10 / 13 + 6 * 6 / 10 + 4 * 8 / 9) / 16, "support": 16})


def test_a_class_never_predicted_or_never_present_scores_zero_not_nan():
  m = report.precision_recall_f1(np.array([[3, 1, 0], [2, 0, 0], [0, 0, 0]]))
  np.testing.assert_allclose(m["precision"], [3 / 5, 0, 0])
  np.testing.assert_allclose(m["recall"], [3 / 4, 0, 0])
  np.testing.assert_allclose(m["f1-score"], [2 * 3 / 9, 0, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_on_random_labels(seed):
  rng = np.random.default_rng(seed)
  num_classes, names = 10, [f"class {i}" for i in range(10)]
  labels = rng.integers(0, num_classes, 500)
  # Mostly right, some noise, and class 9 never predicted (precision 0/0).
  predictions = np.where(rng.random(500) < 0.6, labels, rng.integers(0, num_classes, 500))
  predictions = np.where(predictions == 9, 8, predictions)
  cm = report.confusion_matrix(labels, predictions, num_classes)
  np.testing.assert_array_equal(
      cm, sklearn.metrics.confusion_matrix(labels, predictions, labels=range(num_classes)))
  ours = report.classification_report(cm, names)
  theirs = sklearn.metrics.classification_report(
      labels, predictions, labels=range(num_classes), target_names=names, output_dict=True,
      zero_division=0)
  for name in names:
    assert ours["classes"][name] == pytest.approx(theirs[name]), name
  for key in ("accuracy", "macro avg", "weighted avg"):
    assert ours[key] == pytest.approx(theirs[key]), key


def test_most_confused_pairs_are_the_largest_off_diagonal_cells():
  pairs = report.most_confused_pairs(HAND_CM, ["a", "b", "c"])
  assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
      ("b", "a", 2), ("a", "b", 1), ("b", "c", 1)]  # zero cells are left out
  assert pairs[0]["fraction_of_true"] == pytest.approx(2 / 6)


def test_most_confident_errors_come_first_and_skip_right_answers():
  probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])
  labels = np.array([1, 1, 0, 0])  # 0 wrong (0.9), 1 right, 2 wrong (0.6), 3 wrong (0.7)
  np.testing.assert_array_equal(report.most_confident_errors(labels, probabilities, 2), [0, 3])


def test_image_index_outside_the_test_split_is_a_user_error():
  assert report.check_image_index(9999, 10000) == 9999
  with pytest.raises(UserError, match="report_image_index=10000 is outside"):
    report.check_image_index(10000, 10000)


def random_predictor(model_name: str, image_shape: tuple[int, int, int]) -> predictor.Predictor:
  model = create_model(model_name, num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
  return predictor.Predictor(
      model=model, variables=variables, image_shape=image_shape, mean=(0.5,), std=(0.25,),
      class_names=tuple("0123456789"), flip=False, batch_size=10, source={},
      config=ml_collections.ConfigDict(), history=())


def test_feature_maps_are_the_stem_conv_and_the_last_block_of_each_stage():
  """A real capture: norms (final_bn) and the classifier are left out. 8x8
  inputs keep it fast; the layers are the same as on 28x28 or 32x32."""
  image = np.random.default_rng(0).normal(size=(8, 8, 1)).astype(np.float32)
  layers = report.stage_outputs(
      report.capture_feature_maps(random_predictor("resnet20_v2", image.shape), image))
  assert [(n, m.shape) for n, m in layers] == [
      ("stem_conv", (8, 8, 16)), ("stage1_block3", (8, 8, 16)),
      ("stage2_block3", (4, 4, 32)), ("stage3_block3", (2, 2, 64))]


def test_stage_outputs_without_named_stages_are_the_last_layer_at_each_size():
  """VGG's convs are Conv_0.., its stages end where a pool halves the size."""
  sizes = (28, 28, 14, 14, 7, 7, 7, 4)
  layers = [(f"Conv_{i}", np.zeros((s, s, 4))) for i, s in enumerate(sizes)]
  assert [n for n, _ in report.stage_outputs(layers)] == [
      "Conv_0", "Conv_1", "Conv_3", "Conv_6", "Conv_7"]
  assert report.stage_outputs([]) == []


def test_figures_render_for_rgb_images_many_classes_and_no_mistakes(tmp_path):
  rng = np.random.default_rng(0)
  names = [f"c{i}" for i in range(100)]
  cm = rng.integers(0, 20, (100, 100))
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  figures = {
      "cm.png": plots.confusion_matrix_figure(cm, names),
      "wrong.png": plots.misclassified_figure(images, ["a"] * 3, ["b"] * 3, [0.9, 0.8, 0.7]),
      "none.png": plots.misclassified_figure(images[:0], [], [], []),
      "curves.png": plots.curves_figure([{"epoch": 1, "train_loss": 1.0, "learning_rate": 0.1}]),
      "act.png": plots.activations_figure(images[0], [("conv", rng.random((32, 32, 4)))], "t"),
  }
  for name, figure in figures.items():
    plots.save(figure, tmp_path / name)
    assert Image.open(tmp_path / name).size[0] > 300, name


def test_curves_show_batch_losses_by_step_against_chance_where_steps_jsonl_exists():
  history = [{"epoch": e, "train_loss": 2.0 / e, "learning_rate": 0.1} for e in (1, 2)]
  steps = [{"step": s, "steps": 10, "loss": 3.0 / s, "loss_min": 2.0 / s, "loss_max": 19.0,
            "learning_rate": 0.1} for s in (10, 20)]
  assert len(plots.curves_figure(history).axes) == 3
  panel = plots.curves_figure(history, steps, num_classes=10).axes[3]
  (mean,) = [line for line in panel.lines if line.get_label().startswith("mean")]
  assert list(mean.get_xdata()) == [10, 20] and list(mean.get_ydata()) == [0.3, 0.15]
  (chance,) = [line for line in panel.lines if line.get_label() == "chance: ln 10"]
  assert chance.get_ydata()[0] == pytest.approx(np.log(10))
  assert panel.get_ylim()[1] >= 19.0  # the spike's max is drawn


def test_html_references_every_image_relatively_and_loads_nothing_external():
  r = {"model": "m", "dataset": "d", "num_examples": 16, "checkpoint": {"epoch": 2},
       **report.classification_report(HAND_CM, ["a", "<b>", "c"]),
       "most_confused": report.most_confused_pairs(HAND_CM, ["a", "<b>", "c"])}
  page = report_pages.html(r, {"test_accuracy": 0.75, "num_params": 1234}, {"seed": 0}, PNGS)
  assert "<h2>Config</h2>" in page and '"seed": 0' in page  # no results config: the given one
  assert re.findall(r'src="([^"]+)"', page) == list(PNGS)
  assert "<td>&lt;b&gt;</td>" in page and "<td><b>" not in page  # class names are escaped
  assert "http" not in page and "<script" not in page and "<link" not in page
  assert "1,234" in page


# --- end to end on real data ----------------------------------------------------------------

def run(env, *args, cwd=REPO):
  result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
  if result.returncode != 0:
    raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result


@pytest.fixture(scope="module")
def two_runs(data_env, tmp_path_factory, mnist):
  """Two tiny MNIST runs trained side by side (the 2nd smaller: another seed,
  1 epoch on 512 images), then the report of the first with every robustness
  section on the first 60 test images."""
  root = tmp_path_factory.mktemp("report")
  workdirs = [root / "seed0", root / "seed1"]
  extra = [[],
           ["--config.seed=1", "--config.num_epochs=1", "--config.data.train_split=train[:512]"]]
  procs = [subprocess.Popen(
      [sys.executable, "main.py", "--config=configs/tiny_mnist.py", f"--workdir={w}", *x],
      cwd=REPO, env=data_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for w, x in zip(workdirs, extra)]
  for proc in procs:
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
  run(data_env, "main.py", "--config=configs/tiny_mnist.py", f"--workdir={workdirs[0]}",
      "--mode=evaluate", "--config.eval.report_image_index=7", *ROBUSTNESS)
  return workdirs


ROBUSTNESS = ["--config.robustness.sections=calibration,corruptions,adversarial",
              "--config.robustness.examples=60", "--config.robustness.pgd_steps=2",
              "--config.robustness.attack_eps=(0,2,76.5)"]


def test_evaluate_writes_the_classification_report(two_runs):
  out = two_runs[0] / "report"
  r = json.loads((out / "classification_report.json").read_text())
  assert list(r["classes"]) == [str(d) for d in range(10)]  # tfds's MNIST class names
  assert sum(c["support"] for c in r["classes"].values()) == 10_000 == r["num_examples"]
  results = json.loads((two_runs[0] / "results.json").read_text())
  assert r["accuracy"] == pytest.approx(results["test_accuracy"])  # the same checkpoint
  assert r["checkpoint"]["epoch"] == results["best_epoch"]
  assert 0 < r["macro avg"]["f1-score"] <= 1 and r["weighted avg"]["support"] == 10_000
  assert r["most_confused"] and r["most_confused"][0]["true"] != r["most_confused"][0]["predicted"]
  assert r["activations_image"]["index"] == 7
  md = (out / "classification_report.md").read_text()
  assert "| 7 |" in md and "| macro avg |" in md and "| weighted avg |" in md
  assert "Most-confused class pairs" in md


@pytest.mark.parametrize("name,min_size", [
    ("confusion_matrix.png", (900, 400)), ("curves.png", (900, 250)),
    ("misclassified.png", (900, 400)), ("activations.png", (900, 500)),
    ("reliability.png", (700, 400)), ("corruptions.png", (600, 300))])
def test_evaluate_writes_real_figures(two_runs, name, min_size):
  image = Image.open(two_runs[0] / "report" / name)
  image.load()  # decodes the whole file
  assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size
  assert image.size[0] <= 4000 and image.size[1] <= 4000, image.size
  assert len(np.unique(np.asarray(image.convert("L")))) > 20  # not blank


def test_index_html_shows_everything_by_relative_path(two_runs):
  page = (two_runs[0] / "report" / "index.html").read_text()
  assert sorted(re.findall(r'src="([^"]+)"', page)) == sorted(
      PNGS + ("reliability.png", "corruptions.png"))
  assert "<h2>Calibration</h2>" in page and "<h2>Adversarial robustness</h2>" in page
  assert "http" not in page and "<script" not in page
  assert "resnet8_v1" in page and "Headline numbers" in page and "Most-confused" in page
  assert "test image #7: true " in page  # the activations' caption
  assert "Config of the training run" in page and '"train_split": "train[:2048]"' in page


def test_evaluate_writes_calibration_corruption_and_attack_results(two_runs):
  out = two_runs[0] / "report"
  robust = json.loads((out / "robustness.json").read_text())
  report = json.loads((out / "classification_report.json").read_text())
  cal = robust["calibration"]
  assert cal["test"]["accuracy"] == pytest.approx(report["accuracy"])  # all 10k test images
  assert sum(cal["reliability"]["count"]) == 10_000
  assert cal["fitted_on"] == "train[55000:56000]"  # tiny_mnist's validation split, not test
  assert cal["test_scaled"]["nll"] <= cal["test"]["nll"] + 0.05
  corr = robust["corruptions"]
  assert corr["generated"] and corr["examples"] == 60 and len(corr["accuracy"]) == 15
  assert all(len(row) == 5 for row in corr["accuracy"].values())
  assert corr["mean"] == pytest.approx(np.mean(list(corr["per_corruption"].values())))
  assert corr["mean"] < corr["clean_accuracy"]
  adv = robust["adversarial"]
  assert adv["examples"] == 60 and adv["pgd_steps"] == 2 and list(adv["pgd"]) == [
      "0/255", "2/255", "76.5/255"]
  assert adv["pgd"]["0/255"] == adv["fgsm"]["0/255"] == pytest.approx(corr["clean_accuracy"])
  assert adv["pgd"]["76.5/255"] < adv["pgd"]["0/255"]
  md = (out / "classification_report.md").read_text()
  for heading in ("## Calibration", "## Corruption robustness", "## Adversarial robustness"):
    assert heading in md
  assert "| glass blur |" in md and "temperature-scaled (T = " in md


def find_chromium() -> str | None:
  names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
  return next((shutil.which(n) for n in names if shutil.which(n)), None)


def test_index_html_renders_in_headless_chromium(two_runs, tmp_path):
  chromium = find_chromium()
  if chromium is None:
    pytest.skip("no chromium binary (apt-get install chromium)")
  shot = tmp_path / "shot.png"
  page = (two_runs[0] / "report" / "index.html").resolve()
  subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                  "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,2000",
                  page.as_uri()], capture_output=True, timeout=120, check=True,
                 cwd=tmp_path)
  pixels = np.asarray(Image.open(shot).convert("RGB"))
  assert pixels.shape[:2] == (2000, 1200)
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # text, tables and figures
  assert (pixels < 250).any(axis=-1).mean() > 0.1  # not a white page


def test_compare_prints_and_writes_both_runs(two_runs, data_env, tmp_path):
  result = run(data_env, "-m", "cnn.report.compare", *map(str, two_runs), "--out",
               str(tmp_path) + "/")
  lines = result.stdout.splitlines()
  assert lines[0].startswith("| workdir | model | dataset | epochs | batch size | params |")
  rows = [line.split(" | ") for line in lines[2:4]]
  assert lines[4] == "" and lines[5].startswith("| workdir | vs | Δ test acc % | Welch t |")
  assert lines[7].endswith("| cannot tell: needs at least 2 seeds on each side (have 1 and 1) |")
  assert len(lines) == 8
  assert rows[0][1:6] == ["resnet8_v1", "mnist", "2", "64", "77,754"]
  assert rows[1][3] == "1"  # the one-epoch run
  assert (tmp_path / "comparison.md").read_text() == result.stdout
  robust = json.loads((two_runs[0] / "report" / "robustness.json").read_text())
  header = lines[0].split(" | ")
  cell = lambda row, name: row[header.index(name)]
  assert cell(rows[0], "ECE %") == f"{100 * robust['calibration']['test']['ece']:.2f}"
  assert cell(rows[0], "corruptions") == "generated"
  assert cell(rows[1], "ECE %") == "—"  # no report for the second run
  with open(tmp_path / "comparison.csv") as f:
    table = list(csv.DictReader(f))
  for workdir, row in zip(two_runs, table):
    results = json.loads((workdir / "results.json").read_text())
    assert float(row["test_accuracy"]) == results["test_accuracy"]
    assert int(row["epochs"]) == results["epochs"]
