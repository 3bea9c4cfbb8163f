"""A report section is one registered object: docs/extending.md's worked
example (predictive entropy), taken from the page as written, registered with
its one line, reaches every place a section is shown: the config's check,
`robustness.evaluate`, the report's markdown, index.html, figures and
captions, the comparison table and CSV, and the README's robustness table."""
import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cnn import robustness
from cnn.config_validation import validate_config
from cnn.inference import predictor
from cnn.report import analysis, compare, pages, results_table
from cnn.robustness.section import ReportSection
from configs import default

REPO = Path(__file__).resolve().parents[1]


def example_file() -> tuple[str, str]:
  """(path, source) of the worked example in docs/extending.md."""
  text = (REPO / "docs" / "extending.md").read_text()
  found = re.search(r"<!-- example: (\S+) -->\n```python\n(.*?)```", text, re.S)
  assert found, "docs/extending.md lost its worked example"
  return found.group(1), found.group(2)


@pytest.fixture()
def entropy(tmp_path, monkeypatch) -> ReportSection:
  """The example's file as a module, and its line in SECTIONS."""
  name, source = example_file()
  assert name == "cnn/robustness/entropy.py"
  path = tmp_path / "entropy.py"
  path.write_text(source)
  spec = importlib.util.spec_from_file_location("entropy_example", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setitem(robustness.SECTIONS, "entropy", module.SECTION)
  return module.SECTION


@pytest.fixture(scope="module")
def tiny_predictor(tiny_run):
  return predictor.load(str(tiny_run[0]), "best")


def test_the_worked_example_reaches_every_table(entropy, tiny_predictor, tmp_path):
  config = default.get_config()
  config.robustness.sections = "calibration,entropy"
  validate_config(config)  # the name is valid once it is registered
  images = np.stack([np.full(tiny_predictor.image_shape, 25 * i, np.uint8) for i in range(10)])
  labels = np.arange(10) % 3
  out = robustness.evaluate(tiny_predictor, config, (images, labels), None)
  assert out["sections"] == ["calibration", "entropy"] and "entropy" in out["seconds"]
  result = out["entropy"]
  assert 0 <= result["all"] <= np.log(10) and sum(result["histogram"]) == 10
  json.dumps(out)  # robustness.json holds it as it is

  markdown, html = pages.robustness_markdown(out), pages.robustness_html(out)
  assert "## Predictive entropy\n" in markdown and "<h2>Predictive entropy</h2>" in html
  figures = analysis.robustness_figures(out)
  assert set(figures) == {"reliability.png", "entropy.png"}

  headline = compare.robustness_headline(out)
  assert headline["entropy"] == result["all"] and headline["ece"] is not None
  assert headline["pgd_2"] is None  # not measured
  assert ("entropy", "entropy") in [(h, k) for h, k, _ in compare.columns()]

  results_dir = tmp_path / "results"
  results_dir.mkdir()
  (results_dir / "toy_seed0.json").write_text(json.dumps(
      {"name": "toy", "seed": 0, "robustness": out}))
  table = results_table.render_robustness(results_dir)
  header, _, row = table.splitlines()
  assert header.split(" | ")[-2] == "mean entropy"
  assert row.split(" | ")[-2] == f"{result['all']:.3f}"


def test_evaluate_writes_the_worked_example_into_the_report(entropy, tiny_run, data_env,
                                                            tmp_path, monkeypatch):
  """`--mode=evaluate` (analysis.write_report) on a copy of a trained workdir:
  the section's result, table, figure and caption are in the report."""
  from configs import tiny_mnist  # pylint: disable=import-outside-toplevel
  for key in ("CNN_ARCHIVE_DIR", "TFDS_DATA_DIR"):
    monkeypatch.setenv(key, data_env[key])
  workdir = tmp_path / "run"
  shutil.copytree(tiny_run[0], workdir)
  config = tiny_mnist.get_config()
  config.robustness.sections = "entropy"
  analysis.write_report(config, str(workdir))
  report = workdir / "report"
  assert json.loads((report / "robustness.json").read_text())["entropy"]["all"] >= 0
  assert (report / "entropy.png").stat().st_size > 1000
  html = (report / "index.html").read_text()
  assert "<h2>Predictive entropy</h2>" in html and entropy.caption in html
  assert 'src="entropy.png"' in html
  assert "## Predictive entropy" in (report / "classification_report.md").read_text()


def test_a_result_of_a_section_no_longer_registered_still_shows():
  """An old robustness.json with a section since removed: its numbers, key by key."""
  out = {"sections": ["gone"], "seconds": {"gone": 1.0}, "gone": {"score": 0.25, "note": "x"}}
  assert "## Gone\n" in pages.robustness_markdown(out)
  assert "0.2500" in pages.robustness_html(out)
