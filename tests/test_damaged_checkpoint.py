"""Any byte of a checkpoint on disk may be wrong later (a failing disk, a copy
cut short). The damage matrix: every file of a real checkpoint (listed at run
time, whatever orbax writes today) emptied, truncated to half, overwritten with
random bytes of its size, or deleted, and the whole step folder deleted,
renamed to orbax's unfinished-write name or missing its commit_success.txt.
Every case resumes from the newest step that reads, bitwise equal to that
step as written (so the run ends bitwise equal to an uninterrupted one: the
end-to-end cases below and tests/test_resume.py), moves a damaged step to
`damaged_checkpoints/` with one warning line, and never shows a traceback; with
nothing readable it is one `error:` line and exit status 2. Readers (predict,
evaluate) name a damaged checkpoint in one line."""
import logging
import os
import shutil

import numpy as np
import pytest

from conftest import run_main
from test_resume import assert_bitwise_equal, final_params

# Its module-scoped fixtures are made once: the whole file runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_damaged_checkpoint")

TINY = "--config=configs/tiny_mnist.py"
FILE_DAMAGE = ("emptied", "truncated", "random", "deleted")
FOLDER_DAMAGE = ("folder deleted", "renamed to unfinished", "commit_success.txt missing")
TMP_NAME = "64.orbax-checkpoint-tmp-1764620000"  # orbax's name for a save in flight
# CI damages these (one of each kind: the JSON orbax's manager reads as it opens, our
# metadata, an array index, the biggest array file); --slow damages every file.
CI_FILES = ("_CHECKPOINT_METADATA", "metrics/metrics", "meta/metadata", "state/manifest.ocdbt")


def files_of(step_dir) -> list[str]:
  return sorted(str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file())


def damage_file(path, how: str, seed: int) -> None:
  data = path.read_bytes()
  if how == "emptied":
    path.write_bytes(b"")
  elif how == "truncated":
    path.write_bytes(data[: len(data) // 2])
  elif how == "random":
    path.write_bytes(np.random.default_rng(seed).bytes(len(data)))
  else:
    path.unlink()


def damage_folder(checkpoints, how: str) -> None:
  if how == "folder deleted":
    shutil.rmtree(checkpoints / "64")
  elif how == "renamed to unfinished":
    (checkpoints / "64").rename(checkpoints / TMP_NAME)
  else:
    (checkpoints / "64" / "commit_success.txt").unlink()


def reference_files(tiny_run) -> list[str]:
  return files_of(tiny_run[0] / "checkpoints" / "64")


def biggest(reference, files) -> str:
  return max(files, key=lambda f: (reference / "checkpoints" / "64" / f).stat().st_size)


def cases(reference, files, slow: bool) -> list[tuple[str | None, str]]:
  """(file, how) for every file damage, (None, how) for the folder's."""
  chosen = files if slow else [f for f in files if f in CI_FILES] + [biggest(reference, files)]
  assert slow or len(chosen) == len(CI_FILES) + 1, f"a CI file is gone from checkpoints: {files}"
  return [(f, how) for f in chosen for how in FILE_DAMAGE] + [(None, h) for h in FOLDER_DAMAGE]


@pytest.fixture(scope="module")
def tiny_experiment(data_env):
  """The tiny run's Experiment, built in this process once (its abstract state and
  fingerprint are what `train.Run` restores into)."""
  from cnn import train  # pylint: disable=import-outside-toplevel
  from configs import tiny_mnist  # pylint: disable=import-outside-toplevel
  with pytest.MonkeyPatch.context() as mp:
    for key in ("CNN_ARCHIVE_DIR", "TFDS_DATA_DIR"):
      mp.setenv(key, data_env[key])
    yield train.Experiment(tiny_mnist.get_config())


def resume_in_process(exp, workdir, caplog):
  """`train.Run(exp, workdir)`, the trainer's resume, and its warning lines."""
  from cnn import train  # pylint: disable=import-outside-toplevel
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    run = train.Run(exp, str(workdir))
  try:
    state = run.state
    step = run.step
  finally:
    run.close()
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  return step, state, warnings


def check_case(exp, reference, workdir, caplog, label):
  step, state, warnings = resume_in_process(exp, workdir, caplog)
  from cnn import checkpoint  # pylint: disable=import-outside-toplevel
  expected = checkpoint.read(str(reference), step, state=exp.initial_state)["state"]
  assert_bitwise_equal(state.params, expected.params, label)
  assert_bitwise_equal(state.opt_state, expected.opt_state, label)
  assert_bitwise_equal(state.batch_stats, expected.batch_stats, label)
  damaged = workdir / "damaged_checkpoints"
  assert all("Traceback" not in w for w in warnings), (label, warnings)
  return step, warnings, sorted(p.name for p in damaged.iterdir()) if damaged.exists() else []


def run_matrix(tiny_run, tiny_experiment, tmp_path, caplog, slow) -> dict:
  """{(file or None, how): the step resumed from} over the matrix, each case checked."""
  reference = tiny_run[0]
  outcomes = {}
  for i, (target, how) in enumerate(cases(reference, reference_files(tiny_run), slow)):
    workdir = tmp_path / f"case{i}"
    shutil.copytree(reference / "checkpoints", workdir / "checkpoints")
    if target is None:
      damage_folder(workdir / "checkpoints", how)
    else:
      damage_file(workdir / "checkpoints" / "64" / target, how, seed=i)
    label = f"{target or 'step folder'} {how}"
    step, warnings, moved = check_case(tiny_experiment, reference, workdir, caplog, label)
    if step == 64:  # the damage touched nothing orbax reads: the step is still exact
      assert not warnings and not moved, label
    elif how == "folder deleted":
      assert not warnings and not moved, label
    elif how == "renamed to unfinished":
      assert moved == [TMP_NAME], label
      assert len(warnings) == 1 and f"unfinished checkpoint write {TMP_NAME}" in warnings[0]
    else:
      assert moved == ["64"], (label, step, moved)
      assert len(warnings) == 1 and warnings[0].startswith("checkpoint step 64 in "), (
          label, warnings)
      assert "cannot be read (" in warnings[0] and "damaged_checkpoints/64" in warnings[0]
    assert step in (32, 64), label
    outcomes[(target, how)] = step
    shutil.rmtree(workdir)
  return outcomes


# A traceback from orbax's reads in flight would surface here as an unraisable exception.
NO_TRACEBACK = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@NO_TRACEBACK
def test_damage_matrix_ci_cases(tiny_run, tiny_experiment, tmp_path, caplog):
  outcomes = run_matrix(tiny_run, tiny_experiment, tmp_path, caplog, slow=False)
  # What the manager and the resume read is caught, whatever the damage.
  caught = [f for (f, how), step in outcomes.items() if f is not None and step == 32]
  files = reference_files(tiny_run)
  for f in CI_FILES + (biggest(tiny_run[0], files),):
    assert caught.count(f) == len(FILE_DAMAGE), (f, outcomes)
  assert outcomes[(None, "commit_success.txt missing")] == 64  # orbax's rule on a local disk
  assert outcomes[(None, "renamed to unfinished")] == 32


@NO_TRACEBACK
@pytest.mark.slow
def test_damage_matrix_every_file(tiny_run, tiny_experiment, tmp_path, caplog):
  outcomes = run_matrix(tiny_run, tiny_experiment, tmp_path, caplog, slow=True)
  assert len(outcomes) == len(FILE_DAMAGE) * len(reference_files(tiny_run)) + len(FOLDER_DAMAGE)
  caught = sum(step == 32 for step in outcomes.values())
  print(f"{caught} of {len(outcomes)} cases damaged what a resume reads (moved aside); the "
        "rest touched files orbax does not read and resumed the exact step")


def resumed_copy(tiny_run, tmp_path, damage):
  reference, _ = tiny_run
  workdir = tmp_path / "w"
  shutil.copytree(reference, workdir)
  (workdir / "results.json").unlink()
  damage(workdir / "checkpoints")
  return reference, workdir


def assert_resumed_at_32_bitwise(reference, workdir, resumed, warning_start):
  warnings = [l for l in resumed.stderr.splitlines() if l.startswith("W")]
  assert len(warnings) == 1 and warning_start in warnings[0], resumed.stderr[-3000:]
  assert "Traceback" not in resumed.stderr and "E1" not in resumed.stderr, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stderr and "at step 32 (epoch 1)" in resumed.stderr
  assert (workdir / "results.json").exists()
  assert_bitwise_equal(final_params(workdir), final_params(reference))


def empty_every_file_of_64(checkpoints):
  for f in (checkpoints / "64").rglob("*"):
    if f.is_file():
      f.write_bytes(b"")


def random_json_of_64(checkpoints):
  for name in ("metrics/metrics", "_CHECKPOINT_METADATA", "meta/metadata"):
    (checkpoints / "64" / name).write_bytes(os.urandom(40))


@pytest.mark.parametrize("damage", [
    empty_every_file_of_64,
    pytest.param(random_json_of_64, marks=pytest.mark.slow),
])
def test_damaged_newest_checkpoint_resumes_and_ends_bitwise_equal(tiny_run, data_env, tmp_path,
                                                                  damage):
  """As a user hits it: the newest checkpoint's files emptied (a failing disk) or its
  small JSON files overwritten; the same command again."""
  reference, workdir = resumed_copy(tiny_run, tmp_path, damage)
  resumed = run_main(data_env, TINY, f"--workdir={workdir}")
  assert_resumed_at_32_bitwise(reference, workdir, resumed, "checkpoint step 64 in ")
  assert (workdir / "damaged_checkpoints" / "64" / "state").is_dir()  # kept, not deleted


@pytest.mark.slow
def test_unfinished_newest_write_resumes_and_ends_bitwise_equal(tiny_run, data_env, tmp_path):
  reference, workdir = resumed_copy(
      tiny_run, tmp_path, lambda c: (c / "64").rename(c / TMP_NAME))
  resumed = run_main(data_env, TINY, f"--workdir={workdir}")
  assert_resumed_at_32_bitwise(reference, workdir, resumed,
                               f"unfinished checkpoint write {TMP_NAME}")
  assert (workdir / "damaged_checkpoints" / TMP_NAME / "state").is_dir()


def test_no_readable_checkpoint_is_one_line(tiny_run, data_env, tmp_path):
  reference, _ = tiny_run
  workdir = tmp_path / "w"
  shutil.copytree(reference, workdir)
  for step in ("32", "64"):
    (workdir / "checkpoints" / step / "metrics" / "metrics").write_bytes(b"")
  result = run_main(data_env, TINY, f"--workdir={workdir}", check=False)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert [l for l in lines if not l.startswith("I")][-1] == lines[-1]
  assert lines[-1].startswith(f"error: no readable checkpoint in {workdir}/checkpoints: steps "
                              "64, 32 are damaged (moved to"), lines[-1]
  assert "rerun to start over" in lines[-1] and "Traceback" not in result.stderr
  assert sum(l.startswith("W") for l in lines) == 2  # one warning per damaged step
  assert sorted(p.name for p in (workdir / "damaged_checkpoints").iterdir()) == ["32", "64"]


@pytest.mark.parametrize("args", [
    ("--mode=predict", "--checkpoint=last"),
    pytest.param(("--mode=evaluate", TINY), marks=pytest.mark.slow),
])
def test_readers_name_a_damaged_checkpoint_in_one_line(tiny_run, data_env, tmp_path, args):
  """predict --workdir (the best and the last checkpoint) and evaluate: one error line naming
  the step, nothing moved (readers never change a workdir)."""
  reference, _ = tiny_run
  workdir = tmp_path / "w"
  shutil.copytree(reference, workdir)
  (workdir / "checkpoints" / "64" / "state" / "manifest.ocdbt").write_bytes(b"")
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.new("L", (28, 28)).save(tmp_path / "digit.png")
  extra = (f"--images={tmp_path / 'digit.png'}",) if "--mode=predict" in args else ()
  result = run_main(data_env, *args, *extra, f"--workdir={workdir}", check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.strip().splitlines() if not l.startswith("I")]
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith(f"error: checkpoint step 64 in {workdir}/checkpoints cannot be read ("
                             ), lines[0]
  assert lines[0].endswith("rerun the training command to move it aside and resume from the "
                           "newest good one")
  assert not (workdir / "damaged_checkpoints").exists()
