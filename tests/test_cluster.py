"""Accelerator and pod readiness, proven on this CPU: simulated device counts
(`--xla_force_host_platform_device_count`), real processes joined on
loopback, launchers simulated through their environment variables.

The fast checks run in CI. The device-count x config matrix and the
multi-process stop/kill/resume runs are marked `cluster` (minutes on 2 cores):

  python -m pytest -q tests --cluster -m cluster
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import backend, distributed, train
from conftest import REPO, run_main

SMALL = ["--config=configs/tiny_mnist.py", "--config.data.train_split=train[:1024]",
         "--config.learning_rate=0.001", "--config.log.every_steps=5"]


def with_devices(env: dict, n: int) -> dict:
  return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# --- launchers, simulated through their environment -------------------------------------------

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
         "SLURM_STEP_NUM_NODES": "2"}


def test_slurm_one_task_per_node_uses_every_gpu_of_the_node():
  env = {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_ON_NODE": "8"}
  plan = distributed.launch_plan(env)
  assert plan == {"cluster_detection_method": "slurm", "local_device_ids": list(range(8))}
  env = {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
  assert distributed.launch_plan(env)["local_device_ids"] == [0, 1, 2, 3]


def test_slurm_one_task_per_gpu():
  # --gpus-per-task=1: SLURM leaves each task one visible GPU, which is number 0 for it.
  env = {**SLURM, "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_PROCID": "13",
         "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "CUDA_VISIBLE_DEVICES": "5"}
  assert distributed.launch_plan(env)["local_device_ids"] == [0]
  # All 8 GPUs visible to each of 8 tasks: task i takes GPU i.
  env = {**env, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
  assert distributed.launch_plan(env)["local_device_ids"] == [5]
  # 2 tasks per node, 8 GPUs: 4 each.
  env = {**SLURM, "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "2",
         "SLURM_GPUS_ON_NODE": "8"}
  assert distributed.launch_plan(env)["local_device_ids"] == [4, 5, 6, 7]


def test_slurm_cpu_job_and_compressed_task_counts():
  assert distributed.launch_plan({**SLURM, "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}) == {
      "cluster_detection_method": "slurm", "local_device_ids": None}
  assert distributed._expand_counts("4(x2),2,3(x1)") == [4, 4, 2, 3]
  env = {**SLURM, "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "4(x2),2"}
  assert distributed.slurm_tasks_on_this_node(env) == 2


def test_explicit_flags_win_and_nothing_detected_means_jax_detection():
  assert distributed.launch_plan(SLURM, "10.0.0.1:1234", 4, 3) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
  # No SLURM (TPU VM, GKE, Open MPI, a laptop): JAX's own detection decides.
  assert distributed.launch_plan({"TPU_WORKER_HOSTNAMES": "a,b"}) is None
  assert distributed.launch_plan({}) is None


def test_gpu_determinism_flag_is_added_once_and_only_when_asked():
  config = train.ml_collections.ConfigDict({"backend": {"gpu_deterministic_ops": True}})
  assert backend.xla_flags(config, "") == "--xla_gpu_deterministic_ops=true"
  assert backend.xla_flags(config, "--xla_gpu_deterministic_ops=false") == (
      "--xla_gpu_deterministic_ops=false")  # the user's own setting wins
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cuda"}
  backend.configure(config, env)
  assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=2 "
                              "--xla_gpu_deterministic_ops=true")
  config.backend.gpu_deterministic_ops = False
  assert backend.xla_flags(config, "") == ""


def test_a_gpu_box_running_the_cpu_jaxlib_is_told_the_install_line():
  import importlib.metadata  # the hint names the installed jax (0.10.2 pinned, 0.11 on images)
  installed = importlib.metadata.version("jax")
  hint = backend.unused_accelerator_hint("cpu", ["/dev/nvidia0"])
  assert f'pip install "jax[cuda12]=={installed}"' in hint
  assert f"jax[tpu]=={installed}" in backend.unused_accelerator_hint("cpu", ["/dev/accel0"])
  assert backend.unused_accelerator_hint("gpu", ["/dev/nvidia0"]) is None
  assert backend.unused_accelerator_hint("cpu", []) is None


def test_he_paper_configs_ask_for_deterministic_gpu_ops():
  from configs import resnet20v1_cifar10, default
  assert resnet20v1_cifar10.get_config().backend.gpu_deterministic_ops
  assert not default.get_config().backend.gpu_deterministic_ops


# --- batch sizes and the step loop ------------------------------------------------------------

@pytest.mark.parametrize("devices,expected", [(1, 500), (2, 500), (4, 500), (8, 504), (16, 512)])
def test_default_eval_batch_is_rounded_up_to_the_devices(devices, expected):
  assert train.fit_eval_batch_size(500, devices) == expected


def host_sync_counts(env: dict, processes: int, workdir: Path) -> list[dict]:
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, str(REPO / "tests" / "host_sync_probe.py"), f"127.0.0.1:{port}",
       str(processes), str(i), str(workdir)], env=with_devices(env, 1), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(processes)]
  try:
    outs = [p.communicate(timeout=240) for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0] * processes, outs[0][1][-3000:]
  return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


@pytest.mark.cluster
def test_several_processes_agree_on_stopping_only_at_sync_points(data_env, mnist, tmp_path):
  """32 steps, log_every_steps=5, 16 steps per epoch: with 2 processes the
  loop asks for (and all-gathers) the stop flags at steps 5, 10, ..., 30 and
  at the two epoch ends, 8 times, never per step; one process reads its own
  flag every step, which needs no device."""
  two = host_sync_counts(data_env, 2, tmp_path / "two")
  assert [r["steps"] for r in two] == [32, 32]
  assert [r["asked_at"] for r in two] == [[5, 10, 15, 16, 20, 25, 30, 32]] * 2
  (one,) = host_sync_counts(data_env, 1, tmp_path / "one")
  assert one["asked_at"] == list(range(1, 33))


@pytest.mark.cluster
def test_unset_eval_batch_is_fitted_to_eight_devices_with_one_log_line(data_env, tmp_path):
  result = run_main(with_devices(data_env, 8), *SMALL, f"--workdir={tmp_path}",
                    "--config.num_epochs=1", "--config.eval.batch_size=500",
                    "--config.data.train_split=train[:512]", "--config.data.test_split=test[:3001]")
  lines = [l for l in result.stderr.splitlines() if "eval_batch_size 500 -> 504" in l]
  assert len(lines) == 1
  startup = [l for l in result.stderr.splitlines() if "backend cpu" in l]
  assert len(startup) == 1 and "8 devices, 8 local, 1 processes" in startup[0]
  assert "mesh {'data': 8}" in startup[0]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["test_count"] == 3001 and results["devices"] == 8  # padded, masked


def start_processes(env: dict, n: int, devices_each: int, workdir: Path, *args: str,
                    slurm: bool = False) -> list[subprocess.Popen]:
  """`n` real main.py processes joined on loopback: by explicit flags, or as
  SLURM would start them (JAX's own SLURM detection finds the coordinator)."""
  port = free_port()
  procs = []
  for i in range(n):
    if slurm:
      extra_env = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "127.0.0.1",
                   "SLURM_NTASKS": str(n), "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
                   "SLURM_STEP_TASKS_PER_NODE": str(n), "JAX_COORDINATOR_PORT": str(port)}
      flags = []
    else:
      extra_env = {}
      flags = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}",
               f"--process_id={i}"]
    procs.append(subprocess.Popen(
        [sys.executable, "main.py", *args, f"--workdir={workdir}", *flags], cwd=REPO,
        env={**with_devices(env, devices_each), **extra_env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True))
  return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[str]:
  try:
    return [p.communicate(timeout=timeout)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()


# --- the slow matrix (--cluster) --------------------------------------------------------------

CONFIG_FILES = sorted(p for p in (REPO / "configs").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.cluster
@pytest.mark.parametrize("devices", [1, 2, 4, 8, 16])
def test_every_config_starts_on(devices, data_env, mnist, cifar10):
  out = subprocess.run([sys.executable, str(REPO / "tests" / "config_matrix_probe.py"),
                        *map(str, CONFIG_FILES)], env=with_devices(data_env, devices),
                       capture_output=True, text=True, timeout=1800)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  assert [r["config"] for r in rows] == [p.stem for p in CONFIG_FILES]
  for r in rows:
    assert r["devices"] == devices and r["eval_batch_size"] % devices == 0
    if "loss" in r:
      assert np.isfinite(r["loss"]) and r["test"]["count"] == 700
  assert sum("loss" in r for r in rows) >= 5  # the ResNet-20s and MNIST nets trained a step


def first_checkpoint(workdir: Path, timeout: float = 300) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [p for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    if steps:
      return
    time.sleep(0.5)
  raise AssertionError(f"no checkpoint in {workdir} after {timeout} s")


def metrics(workdir: Path, name: str = "metrics.jsonl") -> list[dict]:
  return [json.loads(l) for l in (workdir / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process_eight_devices(data_env, mnist, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("single")
  run_main(with_devices(data_env, 8), *SMALL, "--config.data.train_split=train[:512]",
           "--config.num_epochs=3", f"--workdir={workdir}")
  return workdir


def assert_same_run(multi: Path, single: Path) -> None:
  m, s = metrics(multi), metrics(single)
  assert len(m) == len(s) == 3
  for a, b in zip(m, s):
    np.testing.assert_allclose([a["train_loss"], a["val_loss"]],
                               [b["train_loss"], b["val_loss"]], rtol=0, atol=1e-5)
    assert a["val_accuracy"] == b["val_accuracy"] and a["step"] == b["step"]
  m, s = metrics(multi, "steps.jsonl"), metrics(single, "steps.jsonl")
  assert [(r["step"], r["steps"]) for r in m] == [(r["step"], r["steps"]) for r in s]
  for key in ("loss", "loss_min", "loss_max"):  # single batches: less averaged, so rtol 3e-5
    np.testing.assert_allclose([r[key] for r in m], [r[key] for r in s], rtol=3e-5, atol=0)
  rm, rs = (json.loads((w / "results.json").read_text()) for w in (multi, single))
  assert rm["devices"] == rs["devices"] == 8
  assert rm["test_accuracy"] == rs["test_accuracy"] and rm["test_count"] == 10_000


@pytest.mark.cluster
@pytest.mark.parametrize("processes,devices_each", [(2, 4), (4, 2)])
def test_multiprocess_sigterm_and_kill9_resume_to_the_single_process_answer(
    processes, devices_each, data_env, one_process_eight_devices, tmp_path):
  # 3 epochs of 8 steps: rounding differences between layouts stay within the tolerance
  # of the other multi-device tests (they grow with the number of steps).
  args = (*SMALL, "--config.data.train_split=train[:512]", "--config.num_epochs=3")
  # 1. SIGTERM to every process (a scheduler's preemption): all stop at one step, exit 0.
  stopped = tmp_path / "sigterm"
  procs = start_processes(data_env, processes, devices_each, stopped, *args)
  first_checkpoint(stopped)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  errors = wait_all(procs, 240)
  assert [p.returncode for p in procs] == [0] * processes, errors[0][-3000:]
  assert all("preempted: stopped by SIGTERM at step" in e for e in errors)
  assert len({e.split("stopped by SIGTERM at step ")[1].split(":")[0] for e in errors}) == 1
  assert not (stopped / "results.json").exists()
  # 2. kill -9 of one process; the others fail or are killed, as a scheduler would.
  killed = tmp_path / "kill9"
  procs = start_processes(data_env, processes, devices_each, killed, *args)
  first_checkpoint(killed)
  procs[-1].send_signal(signal.SIGKILL)
  try:  # the others fail in their next collective, or hang in it until the scheduler kills them
    wait_all(procs, 60)
  except subprocess.TimeoutExpired:
    pass  # wait_all has killed them
  assert not (killed / "results.json").exists()
  # 3. The same command again resumes both and finishes like one process with 8 devices.
  for workdir in (stopped, killed):
    procs = start_processes(data_env, processes, devices_each, workdir, *args)
    errors = wait_all(procs, 600)
    assert [p.returncode for p in procs] == [0] * processes, errors[0][-3000:]
    assert "resumed from" in errors[0]
    assert_same_run(workdir, one_process_eight_devices)
  # 4. --mode=evaluate on the same processes writes the report.
  procs = start_processes(data_env, processes, devices_each, stopped, *args, "--mode=evaluate")
  errors = wait_all(procs, 600)
  assert [p.returncode for p in procs] == [0] * processes, errors[0][-3000:]
  report = json.loads((stopped / "report" / "classification_report.json").read_text())
  single = json.loads((one_process_eight_devices / "results.json").read_text())
  assert report["num_examples"] == 10_000
  assert report["accuracy"] == pytest.approx(single["test_accuracy"], abs=1e-9)
  assert (stopped / "report" / "index.html").stat().st_size > 1000
