"""The docs' measured blocks are rendered from the saved benchmark runs (the
Performance block in docs/performance.md, the speedrun block in
docs/experiments.md, the tables of benchmarks/README.md); helpers of the
benchmarks."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("pattern,render", [
    ("speedrun*.json", ["benchmarks/speedrun.py", "--render"]),
    ("record_speedrun_*.json", ["benchmarks/record_speedrun.py"])])
def test_speedrun_blocks_are_rendered_from_the_saved_runs(pattern, render):
  saved = sorted(str(p.relative_to(REPO)) for p in (REPO / "benchmarks/results").glob(pattern))
  assert saved
  result = subprocess.run(
      [sys.executable, *render, *saved, "--readme", "docs/experiments.md", "--check"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr


def test_record_speedrun_table_puts_ours_beside_airbench_on_the_same_gpu():
  sys.path.insert(0, str(REPO))
  from benchmarks import record_speedrun  # pylint: disable=import-outside-toplevel
  summary = lambda m, s, n=25: {"mean": m, "std": s, "median": m, "n": n}  # noqa: E731
  ours = {"date": "2026-12-06", "device": "NVIDIA H200", "jax": "0.11.2", "seeds_asked": 25,
          "train_images": 50000, "test_images": 10000, "compile_seconds": 41.23,
          "recipe": {"epochs": 8, "batch_size": 2000, "dtype": "float16", "widths": [64, 256, 256]},
          "test_accuracy": summary(0.9405, 0.0012), "train_seconds": summary(2.5, 0.02),
          "breakdown": {"seed": 25, "fit_s": 0.01, "data_s": 0.08, "steps_s": 2.2,
                        "dispatch_s": 0.4, "eval_s": 0.2, "total_s": 2.49, "step_ms": 11.0},
          "profile": {"seed": 26, "where": "/device:GPU:0", "device_ms": 2100.0,
                      "modules": {"jit__step": 1900.0, "jit__evaluate": 150.0},
                      "top": [{"module": "jit__step", "op": "cudnn-conv-bw-filter.3",
                               "kernel": "sm90_xmma_wgrad_implicit_gemm", "ms": 300.0,
                               "calls": 200, "share": 0.1429}]}}
  table = record_speedrun.render({
      "date": "2026-12-06", "device": "NVIDIA H200", "ours": ours,
      "airbench94_muon": {"runs_asked": 25, "staged": {"commit": "abcdef123456"},
                          "test_accuracy": summary(0.9398, 0.0014),
                          "train_seconds": summary(2.1, 0.01)},
      "airbench94": {"runs_asked": 25, "runs": [], "staged": {"commit": "abcdef123456"}}})
  assert table.startswith("Measured 2026-12-06 on NVIDIA H200, jax 0.11.2:")
  assert ("| ours (JAX) | `python -m cnn.speedrun --seeds 25` | 25 | 94.05 ± 0.12 % | yes | "
          "2.500 ± 0.020 | 2.500 | 41.2 |") in table
  assert ("| airbench94_muon (PyTorch) | `python airbench94_muon.py` at abcdef1, unchanged, "
          "stopped after 25 runs | 25 | 93.98 ± 0.14 % | no | 2.100 ± 0.010 |") in table
  assert "| airbench94 (PyTorch) |" in table and "| 0 | no run finished |" in table
  assert "Ours takes 1.19x airbench94_muon's mean training seconds" in table
  assert ("whitening fit 0.010 s, each epoch's data 0.080 s, steps 2.200 s (11.00 ms a step; "
          "dispatching them took the host 0.400 s), evaluation 0.200 s.") in table
  assert ("Device time of one more run (seed 26, traced with jax.profiler, /device:GPU:0): "
          "2100.0 ms; by program (ms): step 1900.0, evaluate 150.0. Its costliest operations: "
          "cudnn-conv-bw-filter.3 in step 300.0 ms (14.3 %, 200 calls, "
          "`sm90_xmma_wgrad_implicit_gemm`).") in table
  failed = record_speedrun.render({**ours, "profile": {"seed": 26, "error": "RuntimeError: x"}})
  assert "The kernel profile could not be taken: RuntimeError: x." in failed
  cpu = {**ours, "breakdown": None, "profile": None, "device": "cpu", "host": "AMD EPYC (2 cores)", "seeds_asked": 1,
         "recipe": {**ours["recipe"], "dtype": "float32"}, "test_accuracy": summary(0.94, 0, 1),
         "train_seconds": summary(6000.0, 0, 1)}
  table = record_speedrun.render(cpu)  # ours alone, as `python -m cnn.speedrun --out` writes it
  assert table.startswith("Measured 2026-12-06 on AMD EPYC (2 cores), jax 0.11.2:")
  assert "`python -m cnn.speedrun --seeds 1 --dtype float32` | 1 | 94.00 % (n = 1) |" in table


def test_profile_groups_ops_by_layer_and_direction():
  sys.path.insert(0, str(REPO))
  from benchmarks import profile_step  # pylint: disable=import-outside-toplevel
  cat = profile_step.jax_category
  assert cat("jit(f)/transpose(jvp(CifarResNet))/stage1_block1/Conv_0/conv_general_dilated",
             "ynn_fusion.3") == ("convolution", "backward", "stage1_block1/Conv_0")
  assert cat("jit(f)/jvp(CifarResNet)/stage2_block1/BatchNorm_1/reduce_sum",
             "ynn_fusion.4") == ("batchnorm", "forward", "stage2_block1/BatchNorm_1")
  assert cat("jit(f)/jvp(VGG)/stage5/conv/dot_general", "dot.1")[0] == "convolution"
  assert cat("jit(f)/sgd/mul", "fusion.2") == ("optimizer", "-", "-")
  assert cat(None, "transpose_copy_fusion.19") == ("layout copies", "backward", "-")
  assert profile_step.torch_category("ConvolutionBackward0") == ("convolution", "backward")
  assert profile_step.torch_category("aten::native_batch_norm") == ("batchnorm", "forward")


@pytest.mark.parametrize("script, saved, doc", [
    ("run.py", "benchmarks/baseline_cpu.json", "docs/performance.md"),  # the Performance block
    # the per-shape table (and the rule's picks in it)
    ("conv_shapes.py", "benchmarks/results/conv_shapes_cpu.json", "benchmarks/README.md"),
    # augmentation on the accelerator vs the previous host path
    ("augment.py", "benchmarks/results/augment_cpu.json", "benchmarks/README.md"),
])
def test_doc_block_is_rendered_from_the_saved_run(script, saved, doc):
  result = subprocess.run(
      [sys.executable, f"benchmarks/{script}", "--render", saved, "--readme", doc, "--check"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
