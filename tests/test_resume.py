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


def test_saves_are_due_at_the_runs_end_every_n_epochs_and_every_n_steps():
  due = lambda step, epochs, steps=0: checkpoint.due(  # noqa: E731 (8 steps/epoch, 4 epochs)
      step, steps_per_epoch=8, total_steps=32, every_epochs=epochs, every_steps=steps)
  assert [s for s in range(1, 33) if due(s, 1)] == [8, 16, 24, 32]  # the default: each epoch
  assert [s for s in range(1, 33) if due(s, 0)] == [32]  # the run's end only
  assert [s for s in range(1, 33) if due(s, 3)] == [24, 32]
  assert [s for s in range(1, 33) if due(s, 0, 8)] == [8, 16, 24, 32]  # every_steps still counts
  assert [s for s in range(1, 33) if due(s, 0, 5)] == [5, 10, 15, 20, 25, 30, 32]


PAPER_TINY = {"protocol": "paper", "data.validation_split": "", "data.train_split": "train[:256]",
              "data.test_split": "test[:500]", "data.on_device": True, "num_epochs": 3,
              "log.every_steps": 4}  # 3 epochs of 4 steps, a step record every 4


@pytest.fixture()
def paper_tiny(data_env, mnist, monkeypatch):
  """A config function: tiny MNIST under the paper protocol (no validation
  split), with overrides; the data as the tests' main.py runs find it."""
  from configs import tiny_mnist  # pylint: disable=import-outside-toplevel
  for key in ("CNN_ARCHIVE_DIR", "TFDS_DATA_DIR"):
    monkeypatch.setenv(key, data_env[key])

  def make(**overrides):
    config = tiny_mnist.get_config()
    config.update_from_flattened_dict({**PAPER_TINY, **overrides})
    return config
  return make


def train_in_process(config, workdir, stop_at: int | None = None):
  """`train.train_epochs` as main.py runs it, on a fresh Experiment (the loop
  donates its initial state); SIGTERM's flag is raised after step `stop_at`.
  Returns (results, or None when stopped; the Run)."""
  from cnn import train  # pylint: disable=import-outside-toplevel
  from cnn.errors import Preempted  # pylint: disable=import-outside-toplevel
  run = train.Run(train.Experiment(config), str(workdir))
  steps = iter(range(run.step + 1, 10**9))
  try:
    train.train_epochs(run, lambda: next(steps) == stop_at)
    run.manager.wait_until_finished()
    return train.final_results(run, None), run
  except Preempted:
    return None, run
  finally:
    run.close()


def checkpoint_steps(workdir) -> list[int]:
  return checkpoint.finalized_steps(str(workdir))


def test_a_run_without_validation_saves_without_orbax_warning_at_every_epoch(
    paper_tiny, tmp_path, caplog):
  """The paper protocol has no validation split, so no metric to track: its
  manager keeps the newest checkpoints only, and orbax's "Requested
  `tracked_metric`; did not provide metrics" is not logged at each save (it
  was, once an epoch, through the 164 epochs of a He et al. run)."""
  with caplog.at_level("WARNING"):
    results, _ = train_in_process(paper_tiny(), tmp_path / "paper")
  assert results is not None and checkpoint_steps(tmp_path / "paper") == [8, 12]
  assert not [r for r in caplog.records if "tracked_metric" in r.getMessage()]


def test_saving_only_at_the_end_and_at_sigterm_changes_no_number(paper_tiny, tmp_path):
  """checkpoint.every_epochs=0: a SIGTERM mid-epoch still saves its step, no
  epoch end but the last is saved, and the resumed run ends with the metrics,
  step losses, parameters and test accuracy of an uninterrupted run that saved
  every epoch (today's default)."""
  each, _ = train_in_process(paper_tiny(), tmp_path / "each")
  assert checkpoint_steps(tmp_path / "each") == [8, 12]  # keep=2 of 4, 8, 12
  workdir, config = tmp_path / "once", paper_tiny(**{"checkpoint.every_epochs": 0})
  results, run = train_in_process(config, workdir, stop_at=6)  # mid-epoch, mid-window
  assert results is None and run.step == 6 and checkpoint_steps(workdir) == [6]
  results, run = train_in_process(config, workdir)
  assert checkpoint_steps(workdir) == [6, 12] and len(run.history) == 3  # none at step 8
  for name in ("metrics.jsonl", "steps.jsonl"):
    assert (workdir / name).read_text() == (tmp_path / "each" / name).read_text(), name
  assert_bitwise_equal(final_params(workdir), final_params(tmp_path / "each"))
  for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy", "steps"):
    assert results[key] == each[key], key


def test_skipping_epoch_saves_is_refused_where_the_best_epoch_is_reported(paper_tiny):
  """A cross-setting check of config_validation (main.py's one validation)."""
  from cnn.config_validation import validate_config  # pylint: disable=import-outside-toplevel
  from cnn.errors import UserError  # pylint: disable=import-outside-toplevel
  config = paper_tiny(**{"checkpoint.every_epochs": 0, "protocol": "validation",
                         "data.validation_split": "train[55000:56000]"})
  with pytest.raises(UserError, match=r"^config.checkpoint.every_epochs=0 skips epochs, but "
                     r"config.protocol='validation' tests the best epoch's checkpoint; set "
                     r"--config.checkpoint.every_epochs=1 or use --config.protocol=paper$"):
    validate_config(config)
