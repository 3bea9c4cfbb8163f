"""`python -m cnn.report.compare` on hand-written results.json files: formatting,
output paths and errors (the run on real workdirs is in test_report.py)."""
import csv
import json

import pytest

from cnn.report import compare

RESULTS = {"model": "resnet20_v1", "dataset": "cifar10", "epochs": 182, "batch_size": 128,
           "num_params": 272_474, "train_accuracy": 0.99912, "best_val_accuracy": 0.9204,
           "test_accuracy": 0.9151, "wall_time_s": 5025.4, "images_per_s": 2881.7}


def make_workdir(path, **overrides) -> str:
  path.mkdir()
  (path / "results.json").write_text(json.dumps({**RESULTS, **overrides}))
  return str(path)


def test_markdown_row_is_human_readable(tmp_path):
  workdir = make_workdir(tmp_path / "r20")
  table = compare.markdown([workdir], [compare.load_results(workdir)])
  header, rule, row = table.splitlines()
  assert header == ("| workdir | model | dataset | epochs | batch size | params | train acc % | "
                    "best val acc % | test acc % | ± std | seeds | wall time | images/s | ECE % | "
                    "ECE % (T-scaled) | NLL | corruption acc % | corruptions | PGD 2/255 % | "
                    "PGD 8/255 % |")
  assert rule.count("---:") == 17
  assert row == (f"| {workdir} | resnet20_v1 | cifar10 | 182 | 128 | 272,474 | 99.91 | 92.04 | "
                 "91.51 | — | 1 | 1h23m | 2,882 |" + " — |" * 7)


ROBUSTNESS = {
    "calibration": {"test": {"ece": 0.0412, "nll": 0.3301}, "test_scaled": {"ece": 0.0123}},
    "corruptions": {"generated": False, "mean": 0.7012},
    "adversarial": {"pgd": {"1/255": 0.5, "2/255": 0.2345, "8/255": 0.0}},
}


def test_robustness_columns_come_from_the_report_or_the_record(tmp_path):
  workdir = make_workdir(tmp_path / "r20")
  (tmp_path / "r20" / "report").mkdir()
  (tmp_path / "r20" / "report" / "robustness.json").write_text(json.dumps(ROBUSTNESS))
  record = tmp_path / "resnet20v1_cifar10_seed0.json"
  record.write_text(json.dumps({**RESULTS, "robustness": ROBUSTNESS}))
  for source in (workdir, str(record)):
    row = compare.markdown([source], [compare.load_results(source)]).splitlines()[2]
    assert row.endswith("| 4.12 | 1.23 | 0.3301 | 70.12 | CIFAR-10-C | 23.45 | 0.00 |"), row


def test_missing_values_show_a_dash_and_csv_keeps_raw_numbers(tmp_path):
  a = make_workdir(tmp_path / "a", best_val_accuracy=None, wall_time_s=42.0)
  b = make_workdir(tmp_path / "b", wall_time_s=75)
  results = [compare.load_results(a), compare.load_results(b)]
  rows = compare.markdown([a, b], results).splitlines()[2:]
  assert rows[0].split(" | ")[7] == "—" and rows[0].split(" | ")[11] == "42.0s"
  assert rows[1].split(" | ")[11] == "1m15s"
  table = list(csv.DictReader(compare.csv_text([a, b], results).splitlines()))
  assert table[0]["best_val_accuracy"] == "" and table[1]["test_accuracy"] == "0.9151"


@pytest.mark.parametrize("out,expected", [
    (None, ("comparison.md", "comparison.csv")),
    ("res/", ("res/comparison.md", "res/comparison.csv")),
    ("res/mnist", ("res/mnist.md", "res/mnist.csv")),
])
def test_output_paths(out, expected):
  assert tuple(map(str, compare.output_paths(out))) == expected


def test_main_prints_and_writes_into_an_existing_directory(tmp_path, capsys):
  workdir = make_workdir(tmp_path / "run")
  assert compare.main([workdir, "--out", str(tmp_path)]) == 0
  printed = capsys.readouterr().out
  assert (tmp_path / "comparison.md").read_text() == printed
  assert (tmp_path / "comparison.csv").read_text().startswith("workdir,model,dataset,")


def test_default_writes_to_the_current_directory(tmp_path, monkeypatch, capsys):
  workdir = make_workdir(tmp_path / "run")
  monkeypatch.chdir(tmp_path)
  assert compare.main([workdir]) == 0
  assert "resnet20_v1" in capsys.readouterr().out
  assert (tmp_path / "comparison.md").is_file() and (tmp_path / "comparison.csv").is_file()


def test_a_workdir_without_results_is_one_error_line(tmp_path, capsys):
  assert compare.main([str(tmp_path / "unfinished")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and "train it first" in err


def make_sweep(path, accuracies) -> str:
  """A seed sweep's workdir as cnn/sweep.py leaves it (its summary by cnn.seeds)."""
  from cnn import seeds  # pylint: disable=import-outside-toplevel
  path.mkdir()
  for s, acc in enumerate(accuracies):
    make_workdir(path / f"seed_{s}", test_accuracy=acc, seed=s)
  (path / "sweep.json").write_text(json.dumps({
      "seeds": list(range(len(accuracies))), "test_accuracy": seeds.summary(accuracies)}))
  return str(path)


def test_sweeps_are_one_row_each_and_welch_tests_them_against_the_first(tmp_path):
  a = make_sweep(tmp_path / "a", [0.9131, 0.9152, 0.9118, 0.9160])
  b = make_sweep(tmp_path / "b", [0.9170, 0.9188, 0.9201])
  single = make_workdir(tmp_path / "one", test_accuracy=0.9190)
  table = compare.compare([a, b, single], f"{tmp_path}/out/")
  rows = table.splitlines()
  assert rows[2].split(" | ")[8:11] == ["91.40", "0.19", "4"]  # mean, std, seeds
  assert rows[3].split(" | ")[8:11] == ["91.86", "0.16", "3"]
  # scipy.stats.ttest_ind(b, a, equal_var=False): t 3.5019, df 4.9097, p 0.017773
  assert rows[8] == (f"| {b} | {a} | +0.46 | 3.50 | 4.9 | 0.0178 | differ at the 5 % level |")
  assert rows[9] == (f"| {single} | {a} | +0.50 | — | — | — | cannot tell: needs at least 2 "
                     "seeds on each side (have 1 and 4) |")
  assert (tmp_path / "out" / "comparison.md").read_text() == table
