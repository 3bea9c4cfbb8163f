"""What a report section is: one registered object saying what it computes,
how the report shows it (a table, a figure and its caption) and which of its
numbers the comparison and results tables carry.

A section lives in one file of this package (calibration.py, corruptions.py,
adversarial.py end with their `SECTION`) and takes one line of
`cnn.robustness.SECTIONS`; `main.py --mode=evaluate`, `python -m
cnn.robustness`, the report's pages (`cnn/report/pages.py`) and figures
(`cnn/report/analysis.py`), `python -m cnn.report.compare` and the README's
robustness table (`cnn/report/results_table.py`) read it from there.
"""
import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np

MISSING = "—"

# (heading, note, column headers, rows of cells, how many leading text columns)
Table = tuple[str, str, list[str], list[list[str]], int]


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What a section may use: the test split (uint8 images, labels), its first
  `robustness.examples` images (`few_*`, for the slow sections), the held-out
  split for temperature scaling (None: not fitted), the run's config, where
  the original data files are, and the test logits if already computed."""
  images: np.ndarray
  labels: np.ndarray
  few_images: np.ndarray
  few_labels: np.ndarray
  held_out: tuple[np.ndarray, np.ndarray] | None
  config: ml_collections.ConfigDict
  archive_dir: str
  test_logits: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Column:
  """One number of a section in a comparison table: `header`, the `key` it
  has in `python -m cnn.report.compare`'s CSV, `value` (the section's
  result -> the raw number or string, None if absent) and `format` (raw ->
  the markdown cell)."""
  header: str
  key: str
  value: Callable[[dict], Any]
  format: Callable[[Any], str] = str

  def cell(self, result: dict | None) -> str:
    raw = None if not result else self.value(result)
    return MISSING if raw is None else self.format(raw)


@dataclasses.dataclass(frozen=True)
class ReportSection:
  """A section of `--mode=evaluate`'s report beyond accuracy.

  - `compute(predictor, Inputs) -> dict`: its result (JSON-serialisable), kept
    in `report/robustness.json` under `name`;
  - `table(result) -> Table`: how the report's markdown and index.html show it;
  - `figure(result) -> matplotlib Figure` (optional), saved as `figure_file`
    with `caption` under it;
  - `compare_columns`: its columns in `python -m cnn.report.compare`;
  - `results_columns`: its cells in the README's robustness table
    (`results_table.render_robustness`): the header, the cell of a recorded
    run's result (None: not measured), and whether it is a number (right-aligned).
  """
  name: str
  compute: Callable[[Any, Inputs], dict]
  table: Callable[[dict], Table]
  figure: Callable[[dict], Any] | None = None
  figure_file: str = ""
  caption: str = ""
  compare_columns: tuple[Column, ...] = ()
  results_columns: tuple[tuple[str, Callable[[dict | None], str], bool], ...] = ()


def percent(value: float | None) -> str:
  """A fraction as a percentage with two decimals, or the missing mark."""
  return MISSING if value is None else f"{100 * value:.2f}"


def generic_table(name: str, result: dict) -> Table:
  """A section's numbers and strings key by key, for a result without a section
  object (e.g. one recorded by a section since removed)."""
  rows = [[key, f"{value:.4f}" if isinstance(value, float) else str(value)]
          for key, value in result.items() if isinstance(value, (int, float, str))]
  return name.replace("_", " ").capitalize(), "", ["", "value"], rows, 1
