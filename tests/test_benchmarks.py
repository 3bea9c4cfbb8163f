"""The README's Performance block is rendered from the saved benchmark run."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_performance_block_is_rendered_from_the_baseline():
  result = subprocess.run(
      [sys.executable, "benchmarks/run.py", "--render", "benchmarks/baseline_cpu.json",
       "--readme", "README.md", "--check"], cwd=REPO, capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr


def test_speedrun_table_reports_time_to_target_only_when_reached():
  sys.path.insert(0, str(REPO / "benchmarks"))
  import speedrun  # pylint: disable=import-outside-toplevel
  run = {"seed": 0, "test_accuracy": 0.9412, "train_time_s": 30.0, "time_to_target_s": 30.0,
         "compile_time_s": 20.0, "train_images_per_s": 40000.0}
  missed = {**run, "seed": 1, "test_accuracy": 0.9391, "time_to_target_s": None}
  table = speedrun.render({"date": "2026-11-25", "target": 0.94, "overrides": [],
                           "machine": {"devices": ["H100"], "backend": "gpu", "cores": 16,
                                       "cpu": "x"},
                           "runs": [run, missed]})
  assert "| 0 | 94.12% | 30.0 | 30.0 s | 20.0 | 40000 |" in table
  assert "| 1 | 93.91% | 30.0 | not reached |" in table
  assert "| median | 94.02% | 30.0 | 1/2 reached |" in table
  assert "on 1x H100 (16 host cores), backend gpu" in table


def test_readme_speedrun_block_is_rendered_from_the_saved_runs():
  saved = sorted(str(p.relative_to(REPO)) for p in (REPO / "benchmarks/results").glob(
      "speedrun*.json"))
  assert saved
  result = subprocess.run(
      [sys.executable, "benchmarks/speedrun.py", "--render", *saved, "--readme", "README.md",
       "--check"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
