"""Preemption-proof, deterministic training: a run killed at any moment and
restarted with the same command ends bitwise equal to an uninterrupted run."""
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnn import checkpoint
from conftest import REPO, run_main

TINY = "--config=configs/tiny_mnist.py"


def final_params(workdir) -> dict:
  """The parameters (and BN statistics) of the workdir's last checkpoint."""
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  state = ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(steps[-1]) / "state")
  return {"params": state["params"], "batch_stats": state["batch_stats"],
          "opt_state": state["opt_state"], "step": state["step"]}


def assert_bitwise_equal(a, b, path=""):
  if isinstance(a, dict):
    assert a.keys() == b.keys(), path
    for key in a:
      assert_bitwise_equal(a[key], b[key], f"{path}/{key}")
  elif isinstance(a, (list, tuple)):
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
      assert_bitwise_equal(x, y, f"{path}/{i}")
  else:
    assert np.array_equal(np.asarray(a), np.asarray(b)), f"differs at {path}"


def interrupt(env, workdir, when: str, sig: int, *extra: str) -> tuple[int, str]:
  """Starts a run and sends `sig` once its stderr shows `when`."""
  proc = subprocess.Popen([sys.executable, "main.py", TINY, f"--workdir={workdir}", *extra],
                          cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if when in line:
      proc.send_signal(sig)
      break
  rest = proc.communicate(timeout=300)[1]
  return proc.returncode, "".join(seen) + rest


TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a checkpoint being written


def in_flight_saves(checkpoints) -> list[str]:
  try:
    return [p.name for p in checkpoints.iterdir() if p.name.endswith(TMP_SUFFIX)]
  except FileNotFoundError:
    return []


def kill_during_save(env, workdir, after_step: int, *extra: str) -> str | None:
  """Starts a run and SIGKILLs it as soon as a checkpoint of a step after
  `after_step` is being written; returns that checkpoint's temporary
  directory if it was still unfinished after the kill (None: it finished in
  the instant between the look and the kill)."""
  proc = subprocess.Popen([sys.executable, "main.py", TINY, f"--workdir={workdir}", *extra],
                          cwd=REPO, env=env, stderr=subprocess.DEVNULL)
  checkpoints = workdir / "checkpoints"
  try:
    while proc.poll() is None:
      writing = [n for n in in_flight_saves(checkpoints) if int(n.split(".")[0]) > after_step]
      if writing:
        proc.kill()
        proc.wait()
        return writing[0] if (checkpoints / writing[0]).exists() else None
      time.sleep(0.002)
  finally:
    proc.kill()
    proc.wait()
  raise AssertionError(f"the run ended (status {proc.returncode}) before a save after step "
                       f"{after_step} was seen")


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_written_then_resume_is_bitwise_equal(
    tiny_run, data_env, tmp_path):
  reference, _ = tiny_run
  every = "--config.checkpoint.every_steps=5"
  for attempt in range(3):  # the kill must land while the save is unfinished
    workdir = tmp_path / f"killed{attempt}"
    unfinished = kill_during_save(data_env, workdir, 32, every)
    if unfinished:
      break
  assert unfinished, "three kills all missed the save in flight"
  assert not (workdir / "results.json").exists()
  resumed = run_main(data_env, TINY, f"--workdir={workdir}", every)
  step = int(re.search(r"resumed from .* at step (\d+)", resumed.stderr).group(1))
  assert 32 <= step < int(unfinished.split(".")[0]) and (step == 32 or step % 5 == 0)
  assert in_flight_saves(workdir / "checkpoints") == []  # the unfinished one was deleted
  assert_bitwise_equal(final_params(workdir), final_params(reference))
  for name in ("metrics.jsonl", "steps.jsonl"):  # resumed mid-window: the same windows
    assert (workdir / name).read_text() == (reference / name).read_text(), name
  ours, theirs = (json.loads((w / "results.json").read_text()) for w in (workdir, reference))
  assert ours["test_accuracy"] == theirs["test_accuracy"]


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_cleanly(tiny_run, data_env, tmp_path):
  reference, _ = tiny_run
  workdir = tmp_path / "preempted"
  code, stderr = interrupt(data_env, workdir, "epoch 1/2 step 16/32", signal.SIGTERM)
  assert code == 0, stderr[-2000:]
  step = int(re.search(r"preempted: stopped by SIGTERM at step (\d+)", stderr).group(1))
  assert 16 <= step < 64
  assert int(final_params(workdir)["step"]) == step
  assert (workdir / "checkpoints" / str(step)).is_dir()
  run_main(data_env, TINY, f"--workdir={workdir}")
  assert_bitwise_equal(final_params(workdir), final_params(reference))
  assert (workdir / "steps.jsonl").read_text() == (reference / "steps.jsonl").read_text()


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics(tiny_run, data_env, tmp_path):
  reference, _ = tiny_run
  run_main(data_env, TINY, f"--workdir={tmp_path}")
  assert (tmp_path / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
  assert_bitwise_equal(final_params(tmp_path), final_params(reference))


@pytest.mark.slow
def test_divergence_stops_and_keeps_the_last_good_checkpoint(data_env, tmp_path):
  run_main(data_env, TINY, f"--workdir={tmp_path}", "--config.num_epochs=1")
  good = final_params(tmp_path)
  result = run_main(data_env, TINY, f"--workdir={tmp_path}", "--config.learning_rate=1e6",
                    check=False)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert re.match(r"error: training diverged: the loss is not finite at step (3[3-9]|[4-6]\d);"
                  r" the last good checkpoint is kept", last), last
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["32"]
  assert_bitwise_equal(final_params(tmp_path), good)
  # Diverging where the only window closes at the run's last step, not at a log step:
  # the run stops before that window is written (no NaN in steps.jsonl).
  once = tmp_path / "once"
  result = run_main(data_env, TINY, f"--workdir={once}", "--config.learning_rate=1e6",
                    "--config.num_epochs=1", "--config.log.every_steps=1000", check=False)
  assert result.returncode == 2 and "training diverged" in result.stderr
  assert not (once / "steps.jsonl").exists() and not (once / "checkpoints" / "32").exists()


def test_half_written_checkpoint_is_never_the_latest(tiny_run, tmp_path):
  reference, _ = tiny_run
  workdir = tmp_path / "w"
  shutil.copytree(reference, workdir)
  partial = workdir / "checkpoints" / "99.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "garbage").write_bytes(b"\0" * 100)
  manager = checkpoint.make_manager(str(workdir), keep=2)
  assert manager.latest_step() == 64
  manager.close()


def test_reopened_manager_still_keeps_the_best_checkpoint(tmp_path):
  """A resumed run must not forget which checkpoint was best: the metrics are
  stored with each checkpoint and read back when the manager is reopened, so
  the best one survives later saves (a preemption checkpoint without metrics
  in between, as after SIGTERM)."""
  state = {"a": np.ones(3, np.float32)}
  manager = checkpoint.make_manager(str(tmp_path), keep=2)
  checkpoint.save(manager, 8, state, state, {}, val_accuracy=0.95)
  checkpoint.save(manager, 10, state, state, {})  # SIGTERM mid-epoch: no metrics
  manager.wait_until_finished()
  manager.close()
  manager = checkpoint.make_manager(str(tmp_path), keep=2)  # the resumed run
  checkpoint.save(manager, 16, state, state, {}, val_accuracy=0.88)
  checkpoint.save(manager, 24, state, state, {}, val_accuracy=0.93)
  manager.wait_until_finished()
  assert manager.all_steps() == [8, 16, 24]  # the best (8) and the latest 2
  manager.close()
