"""A checkpoint damaged after it was written (truncated, deleted or corrupted
files: a storage fault) is survived: resume falls back to the newest readable
one with a one-line warning naming the damaged step, moves the damaged one
aside (never deletes it), and ends bitwise equal to an uninterrupted run."""
import shutil

import pytest

from conftest import run_main
from test_resume import assert_bitwise_equal, final_params

TINY = "--config=configs/tiny_mnist.py"


def truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def damage(step_dir, how: str) -> None:
  if how == "truncated":  # the newest checkpoint's metadata and array index cut short
    truncate(step_dir / "meta" / "metadata")
    truncate(step_dir / "state" / "manifest.ocdbt")
  elif how == "deleted":
    shutil.rmtree(step_dir / "state" / "d")
  else:  # corrupted: every array data file overwritten with garbage
    for f in (step_dir / "state").rglob("*"):
      if f.is_file() and f.parent.name == "d":
        f.write_bytes(b"\x5a" * f.stat().st_size)


# Truncation runs in CI; deleted and corrupted files with the slower checks (--cluster).
@pytest.mark.parametrize("how", ["truncated",
                                 pytest.param("deleted", marks=pytest.mark.cluster),
                                 pytest.param("corrupted", marks=pytest.mark.cluster)])
def test_damaged_newest_checkpoint_falls_back_and_ends_bitwise_equal(tiny_run, data_env,
                                                                     tmp_path, how):
  reference, _ = tiny_run
  workdir = tmp_path / "w"
  shutil.copytree(reference, workdir)
  (workdir / "results.json").unlink()
  damage(workdir / "checkpoints" / "64", how)
  resumed = run_main(data_env, TINY, f"--workdir={workdir}")
  warnings = [l for l in resumed.stderr.splitlines() if "cannot be read" in l]
  assert len(warnings) == 1 and "checkpoint step 64 in " in warnings[0], resumed.stderr[-3000:]
  assert "resumed from" in resumed.stderr and "at step 32 (epoch 1)" in resumed.stderr
  assert (workdir / "damaged_checkpoints" / "64" / "state").is_dir()  # kept, not deleted
  assert (workdir / "results.json").exists()
  assert_bitwise_equal(final_params(workdir), final_params(reference))


def test_no_readable_checkpoint_is_one_line(tiny_run, data_env, tmp_path):
  reference, _ = tiny_run
  workdir = tmp_path / "w"
  shutil.copytree(reference, workdir)
  for step in ("32", "64"):
    truncate(workdir / "checkpoints" / step / "meta" / "metadata")
  result = run_main(data_env, TINY, f"--workdir={workdir}", check=False)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: no readable checkpoint in {workdir}/checkpoints: steps 64, 32 "
                         "are damaged (moved to"), last
  assert "rerun to start over" in last and "Traceback" not in result.stderr
  assert sorted(p.name for p in (workdir / "damaged_checkpoints").iterdir()) == ["32", "64"]
