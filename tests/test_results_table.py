"""The README's experiment table is generated from results/, never typed."""
import json
import re
from pathlib import Path

import pytest

from cnn.report import results_table

REPO = Path(__file__).resolve().parents[1]


def fake_workdir(path: Path, seed: int, accuracy: float) -> Path:
  path.mkdir()
  (path / "results.json").write_text(json.dumps({
      "test_accuracy": accuracy, "seed": seed, "epochs": 30, "wall_time_s": 3600.0,
      "best_val_accuracy": 0.99, "model": "resnet20_v2", "dataset": "mnist"}))
  return path


def paper_run(tmp_path: Path, results: Path, name: str, seed: int, accuracy: float,
              kind: str = "paper", tag: str | None = None) -> None:
  """A finished run of `name` under protocol `kind`, recorded into `results`."""
  workdir = fake_workdir(tmp_path / f"{name}_{kind}{seed}", seed, accuracy)
  data = json.loads((workdir / "results.json").read_text())
  (workdir / "results.json").write_text(json.dumps({**data, "protocol": kind}))
  results_table.record(str(workdir), name, "1x H200", "python main.py", results, weights=False,
                       tag=tag)


def test_rows_average_over_seeds_and_unrun_rows_say_why(tmp_path):
  results = tmp_path / "results"
  for seed, accuracy in ((0, 0.9960), (1, 0.9964)):
    results_table.record(str(fake_workdir(tmp_path / f"w{seed}", seed, accuracy)),
                         "resnet20_mnist", "2-core CPU", "python main.py ...", results,
                         weights=False)
  table = results_table.render(results)
  row = next(line for line in table.splitlines() if "`resnet20_mnist`" in line)
  # t(0.975, 1 dof) = 12.706: 99.62 ± 12.706 * 0.0283 / sqrt(2) = 99.37-99.87
  assert ("| 99.62 ± 0.03 (2) | 99.37-99.87 | validation | 30 | 2-core CPU, 1.00 h "
          "| — (not shipped) |") in row
  why = results_table.EXPERIMENTS["resnet110v1_cifar10"][3]
  assert re.match(r"queued \d(st|nd|rd|th): 64k iterations, about \d+ h", why), why
  assert ("| `resnet110v1_cifar10` | — | 93.57 (He) | ≥ 93.8 | "
          f"no result yet ({why}) |") in table


def test_queue_positions_agree_with_the_results_readme():
  """Each unrun row's "queued Nth" / "in progress, 1st" is the row's place in the
  numbered queue of results/README.md."""
  queue = re.findall(r"^(\d)\. `(\w+)`", (REPO / "results" / "README.md").read_text(), re.M)
  assert queue, "results/README.md lost its numbered queue"
  place = {name: int(n) for n, name in queue}
  for name, (*_, why) in results_table.EXPERIMENTS.items():
    said = re.match(r"(?:queued |in progress, )(\d)(?:st|nd|rd|th)", why)
    if said:
      assert place.get(name) == int(said.group(1)), (name, why, place)
  for name in place:
    assert re.match(r"(queued |in progress, )\d", results_table.EXPERIMENTS[name][3]), name


def test_readme_table_is_the_rendered_one():
  readme = (REPO / "README.md").read_text()
  block = readme.split(results_table.BEGIN)[1].split(results_table.END)[0]
  assert block.strip() == results_table.render().strip()


def test_rewrite_readme_replaces_only_the_block(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{results_table.BEGIN}\nold\n{results_table.END}\noutro\n")
  results_table.rewrite_readme(readme, "| new |\n")
  assert readme.read_text() == f"intro\n{results_table.BEGIN}\n| new |\n{results_table.END}\noutro\n"


def test_record_from_the_command_line(tmp_path, monkeypatch):
  workdir = fake_workdir(tmp_path / "w", 3, 0.9961)
  monkeypatch.setattr(results_table, "RESULTS_DIR", tmp_path / "results")
  code = results_table.main(["record", str(workdir), "--name", "vgg16_mnist",
                             "--hardware", "2-core CPU", "--command", "python main.py ...",
                             "--no-weights"])  # a fake workdir has no checkpoint
  assert code == 0
  entry = json.loads((tmp_path / "results" / "vgg16_mnist_seed3.json").read_text())
  assert (entry["command"], entry["hardware"], entry["test_accuracy"]) == (
      "python main.py ...", "2-core CPU", 0.9961)


def test_readme_robustness_table_is_the_rendered_one():
  readme = (REPO / "README.md").read_text()
  block = readme.split(results_table.ROBUSTNESS_BEGIN)[1].split(results_table.ROBUSTNESS_END)[0]
  assert block.strip() == results_table.render_robustness().strip()


def test_record_keeps_the_reports_robustness_and_renders_its_row(tmp_path):
  workdir = fake_workdir(tmp_path / "w", 0, 0.9951)
  (workdir / "report").mkdir()
  (workdir / "report" / "robustness.json").write_text(json.dumps({
      "seconds": {"calibration": 30, "corruptions": 600, "adversarial": 1200},
      "calibration": {"test": {"accuracy": 0.9951, "ece": 0.0021, "nll": 0.0183},
                      "test_scaled": {"ece": 0.0011}, "temperature": 1.234},
      "corruptions": {"generated": True, "mean": 0.5012, "examples": 10000},
      "adversarial": {"examples": 10000, "fgsm": {"2/255": 0.99},
                      "pgd": {"2/255": 0.985, "8/255": 0.9}}}))
  results = tmp_path / "results"
  results_table.record(str(workdir), "resnet20_mnist", "2-core CPU", "python main.py ...",
                       results, weights=False)
  rows = results_table.render_robustness(results).splitlines()
  assert rows[2] == ("| [resnet20_mnist seed 0](results/resnet20_mnist_seed0.json) | 99.51 | 0.21 "
                     "| 0.11 (T = 1.23) | 0.0183 | 50.12 (generated, 10,000 images) "
                     "| 99.00 / 98.50 / 90.00 | 10,000 | 30 min |")


@pytest.mark.parametrize("seconds, shown", [(6, "6 s"), (0.0135, "< 1 s")])
def test_a_run_without_a_held_out_split_says_why_it_has_no_temperature(tmp_path, seconds,
                                                                        shown):
  """The evaluation's time: calibration on the report's own logits takes
  milliseconds, shown as under a second rather than 0 s."""
  workdir = fake_workdir(tmp_path / "w", 0, 0.9174)
  (workdir / "report").mkdir()
  (workdir / "report" / "robustness.json").write_text(json.dumps({
      "seconds": {"calibration": seconds},
      "calibration": {"test": {"accuracy": 0.9174, "ece": 0.0519, "nll": 0.3527},
                      "temperature": None, "temperature_note": "no held-out split"}}))
  results = tmp_path / "results"
  results_table.record(str(workdir), "resnet20v2_cifar10", "2-core CPU", "python main.py ...",
                       results, weights=False)
  row = results_table.render_robustness(results).splitlines()[2]
  assert "| 91.74 | 5.19 | — (no held-out split to fit T on) | 0.3527 | — |" in row
  assert row.endswith(f"| {shown} |"), row


def test_each_protocol_gets_its_row_and_a_box_sweep_sits_beside_the_cpu_run(tmp_path):
  """Records of the same config and seed from the box (tag "box") and the CPU
  coexist; the row shows the larger sample and where the other lies; a
  validation-protocol run is a row of its own, never averaged in."""
  results = tmp_path / "results"
  cpu = fake_workdir(tmp_path / "cpu", 0, 0.9133)
  results_table.record(str(cpu), "resnet20v1_cifar10", "2-core CPU", "python main.py ...",
                       results, weights=False)
  for seed, accuracy in enumerate((0.9170, 0.9180, 0.9160)):
    results_table.record(str(fake_workdir(tmp_path / f"box{seed}", seed, accuracy)),
                         "resnet20v1_cifar10", "1x NVIDIA H200 (jax 0.11.2)", "python main.py",
                         results, weights=False, tag="box")
  assert sorted(p.name for p in results.glob("*.json")) == [
      "resnet20v1_cifar10_box_seed0.json", "resnet20v1_cifar10_box_seed1.json",
      "resnet20v1_cifar10_box_seed2.json", "resnet20v1_cifar10_seed0.json"]
  rows = [line for line in results_table.render(results).splitlines()
          if "`resnet20v1_cifar10`" in line]
  assert len(rows) == 1  # both samples are the validation protocol (fake_workdir's default)
  # t(0.975, 2 dof) = 4.303: 91.70 ± 4.303 * 0.10 / sqrt(3) = 91.45-91.95
  assert ("| 91.70 ± 0.10 (3) | 91.45-91.95; the CPU run (91.33, seed 0) lies outside it | "
          "validation |") in rows[0]
  assert "1x NVIDIA H200 (jax 0.11.2)" in rows[0]
  paper = fake_workdir(tmp_path / "paper", 7, 0.9150)
  data = json.loads((paper / "results.json").read_text())
  (paper / "results.json").write_text(json.dumps({**data, "protocol": "paper"}))
  results_table.record(str(paper), "resnet20v1_cifar10", "2-core CPU", "python main.py ...",
                       results, weights=False)
  rows = [line for line in results_table.render(results).splitlines()
          if "`resnet20v1_cifar10`" in line]
  assert [r.split(" | ")[6] for r in rows] == ["paper", "validation"]
  assert "| 91.50 (1) | — (one seed) | paper |" in rows[0]


def test_several_runs_beside_a_sweep_are_counted_not_averaged_into_inside():
  """Two CPU seeds beside a box sweep of three (interval 91.45-91.95): the
  cell counts the runs inside it; one run keeps "lies inside/outside"."""
  box = [{"test_accuracy": a, "seed": s, "tag": "box"}
         for s, a in enumerate((0.9170, 0.9180, 0.9160))]
  cpu = [{"test_accuracy": 0.9133, "seed": 0}, {"test_accuracy": 0.9151, "seed": 1}]
  assert results_table.beside(box, cpu) == "the CPU runs (mean 91.42 of 2): 1 of 2 inside it"
  assert results_table.beside(box, cpu[1:]) == "the CPU run (91.51, seed 1) lies inside it"
  # t(0.975, 1 dof) = 12.71: the two CPU seeds' interval, 90.28-92.56, holds all three
  assert results_table.beside(cpu, box) == "the box runs (mean 91.70 of 3): 3 of 3 inside it"
  assert results_table.beside(cpu[:1], box[:1]) == "the box run (91.70, seed 0) beside it"


def test_he_table_tests_resnet110_against_the_published_mean_and_std(tmp_path):
  """Welch's t of our errors against 2016a's 6.61 ± 0.16 (n = 5), checked by
  hand: t = (6.60 - 6.61) / sqrt(0.10^2 / 3 + 0.16^2 / 5) = -0.109; single
  published numbers get "inside/outside our interval" instead."""
  results = tmp_path / "results"
  for name, accuracies in (("resnet110v1_cifar10", (0.935, 0.933, 0.934)),
                           ("resnet56v1_cifar10", (0.9300, 0.9310, 0.9320))):
    for seed, accuracy in enumerate(accuracies):
      paper_run(tmp_path, results, name, seed, accuracy, tag="box")
  rows = {line.split(" | ")[0][2:]: line for line in
          results_table.render_he2016(results).splitlines()[2:]}
  r110 = rows["ResNet-110"]
  assert "| 6.43 (6.61 ± 0.16, n = 5) | 6.60 ± 0.10 (n = 3) |" in r110
  assert "Welch: t = -0.11, p = 0.92: no difference at the 5 % level" in r110
  # 56: 6.90 ± 0.10, interval 6.90 ± 4.303 * 0.10 / sqrt(3) = 6.65-7.15 holds 6.97
  assert "| 6.90 ± 0.10 (n = 3) | 6.65-7.15 | the published 6.97 lies inside" in rows["ResNet-56"]
  assert "no paper-protocol run yet" in rows["ResNet-32"]


def test_readme_he_table_is_the_rendered_one():
  from cnn.report import he2016  # pylint: disable=import-outside-toplevel
  readme = (REPO / "README.md").read_text()
  block = readme.split(he2016.BEGIN)[1].split(he2016.END)[0]
  assert block.strip() == results_table.render_he2016().strip()


def test_render_names_a_missing_readme_in_one_line(tmp_path, capsys):
  assert results_table.main(["render", "--readme", str(tmp_path / "nope.md")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "nope.md not found" in err and err.count("\n") == 1
  assert not (tmp_path / "nope.md").exists()


def test_he_figure_draws_our_seeds_means_intervals_and_the_published_errors(tmp_path):
  """ResNet-56 v1's three seeds (errors 7.00, 6.90, 6.80: mean 6.90, interval
  6.90 ± 4.303 * 0.10 / sqrt(3) = 6.65-7.15) as dots and a mean with its bar;
  ResNet-20 v2's one seed as a mean without spread; a validation-protocol run
  is not drawn; He et al.'s v1 errors on their dashed line."""
  from cnn.report import he2016  # pylint: disable=import-outside-toplevel
  results = tmp_path / "results"
  for seed, accuracy in enumerate((0.9300, 0.9310, 0.9320)):
    paper_run(tmp_path, results, "resnet56v1_cifar10", seed, accuracy)
  paper_run(tmp_path, results, "resnet20v2_cifar10", 0, 0.9174)
  paper_run(tmp_path, results, "resnet32v1_cifar10", 0, 0.9250, kind="validation")
  ax = he2016.figure(results_table.paper_samples(results)).axes[0]
  bars = {c.get_label(): c for c in ax.containers}
  v1 = bars["ours, post-activation (v1): mean and 95 % interval (seeds as dots)"]
  assert list(v1.lines[0].get_xdata()) == [56]
  assert abs(v1.lines[0].get_ydata()[0] - 6.90) < 1e-9
  (low, high), = [(a[1], b[1]) for a, b in v1.lines[2][0].get_segments()]
  assert abs(low - 6.652) < 1e-3 and abs(high - 7.148) < 1e-3
  v2 = bars["ours, pre-activation (v2): mean and 95 % interval (seeds as dots)"]
  assert list(v2.lines[0].get_xdata()) == [20]
  assert abs(v2.lines[0].get_ydata()[0] - 8.26) < 1e-9
  dots = [line for line in ax.get_lines() if line.get_marker() == "."]
  assert sorted(round(y, 6) for line in dots for y in line.get_ydata()) == [6.8, 6.9, 7.0, 8.26]
  assert all(x != 32 for line in dots for x in line.get_xdata())
  published = next(line for line in ax.get_lines()
                   if line.get_label() == "He et al., post-activation (v1)")
  assert list(published.get_xdata()) == [20, 32, 44, 56, 110]
  assert list(published.get_ydata()) == [8.75, 7.51, 7.17, 6.97, 6.43]


def test_render_writes_the_he_figure_as_png_and_refuses_another_suffix(tmp_path, capsys):
  results = tmp_path / "results"
  paper_run(tmp_path, results, "resnet20v1_cifar10", 0, 0.9133)
  out = tmp_path / "figures" / "new" / "he2016.png"
  assert results_table.main(["render", "--results-dir", str(results), "--figure", str(out)]) == 0
  assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
  assert capsys.readouterr().out.endswith(f"wrote {out}\n")
  svg, readme = tmp_path / "he2016.svg", tmp_path / "README.md"
  readme.write_text(f"{results_table.BEGIN}\nold\n{results_table.END}\n")
  assert results_table.main(["render", "--results-dir", str(results), "--readme", str(readme),
                             "--figure", str(svg)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --figure=") and ".png" in err and err.count("\n") == 1
  assert not svg.exists() and "\nold\n" in readme.read_text()  # checked before any writing
  (tmp_path / "file").write_text("")
  assert results_table.main(["render", "--results-dir", str(results), "--figure",
                             str(tmp_path / "file" / "he2016.png")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: cannot write ") and "--figure" in err and err.count("\n") == 1
