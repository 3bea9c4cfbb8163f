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
