"""`python -m cnn.report.curves`: batch-loss curves and the stability verdict
from steps.jsonl, on a real run and on records with a known spike."""
import json
import math
import subprocess
import sys

import numpy as np
from PIL import Image

from cnn.report import curves
from conftest import REPO


def record(step, loss_max, lr, steps=10):
  return {"step": step, "steps": steps, "loss": loss_max / 2, "loss_min": loss_max / 4,
          "loss_max": loss_max, "learning_rate": lr}


def warmup_then_constant(spike_at=None, spike=19.0):
  """Windows of 10 steps; lr rises to 0.1 over 30 steps, then stays."""
  records = [record(s, 2.0, min(0.1, 0.1 * s / 30)) for s in range(10, 101, 10)]
  if spike_at:
    records[spike_at // 10 - 1] = record(spike_at, spike, records[spike_at // 10 - 1]["learning_rate"])
  return records


def test_the_verdict_looks_only_at_windows_wholly_after_the_learning_rate_peak():
  calm = curves.stability(curves.RunSteps("calm", warmup_then_constant(), 10))
  assert calm["peak_step"] == 30 and calm["steps_after_peak"] == 70
  assert calm["below_chance"] is True and calm["max_loss_after_peak"] == 2.0
  during_warmup = curves.stability(curves.RunSteps("w", warmup_then_constant(spike_at=20), 10))
  assert during_warmup["below_chance"] is True  # a spike during warmup is not "after" it
  after = curves.stability(curves.RunSteps("a", warmup_then_constant(spike_at=70), 10))
  assert after["below_chance"] is False and after["max_loss_step"] == 70
  assert after["chance"] == math.log(10)
  early = curves.stability(curves.RunSteps("e", warmup_then_constant()[:3], 10))
  assert early["below_chance"] is None and "not past the peak" in curves.summary_table([early])


def test_cli_on_a_real_run_prints_the_verdict_and_draws_both_panels(tiny_run, tmp_path):
  workdir, _ = tiny_run
  out = tmp_path / "loss_by_step.png"
  result = subprocess.run(
      [sys.executable, "-m", "cnn.report.curves", str(workdir), str(workdir), "--label", "a",
       "--label", "b", "--out", str(out), "--every", "4"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
  steps = [json.loads(line) for line in (workdir / "steps.jsonl").read_text().splitlines()]
  # tiny_mnist: cosine from step 0, so the peak is the first window's rate
  assert steps[0]["learning_rate"] > steps[1]["learning_rate"]
  worst = max(steps[1:], key=lambda r: r["loss_max"])
  row = (f"| a | 64 | {steps[0]['learning_rate']:g} (8) | 56 | {worst['loss_max']:.4f} "
         f"({worst['step']}) | {math.log(10):.4f} | yes |")
  assert row in result.stdout, result.stdout
  assert f"| 32 | {steps[3]['learning_rate']:.4g} | {steps[3]['loss']:.4f} |" in result.stdout
  image = Image.open(out)
  assert image.size[0] > 1000 and len(np.unique(np.asarray(image.convert("L")))) > 20


def test_cli_refuses_mismatched_labels_and_a_workdir_without_steps(tmp_path, tiny_run):
  workdir, _ = tiny_run
  for args, message in (([str(workdir), "--label", "x", "--label", "y"], "2 --label for 1"),
                        ([str(tmp_path)], "no steps.jsonl in")):
    result = subprocess.run([sys.executable, "-m", "cnn.report.curves", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1]
