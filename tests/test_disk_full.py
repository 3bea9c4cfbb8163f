"""A workdir on a full disk: one `error:` line (exit status 2), the last good
checkpoint kept, and the same command resumes once space is back, ending
bitwise equal to an uninterrupted run.

The disk is a real tmpfs, mounted in a private mount namespace
(`unshare --user --map-root-user --mount`, so no root and nothing visible
outside the test) and resized with `mount -o remount,size=...`: the write
errors are the kernel's own ENOSPC."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from test_resume import assert_bitwise_equal, final_params

TINY = "--config=configs/tiny_mnist.py"

# Runs inside the namespace. $REF: a workdir holding only the step-32
# checkpoint; $OUT: where the logs, exit statuses and the final workdir go.
# Each scenario sets the tmpfs size from what is already used, in KiB.
PROBE = r"""
set -u
mount -t tmpfs -o size=64m tmpfs "$MNT"
cp -a "$REF" "$MNT/w"
used() { df -k --output=used "$MNT" | tail -1 | tr -d ' '; }
run() {  # run NAME: main.py on the tmpfs workdir, status and stderr into $OUT
  "$PYTHON" main.py "$CONFIG" --workdir="$MNT/w" 2> "$OUT/$1.log"; echo $? > "$OUT/$1.rc"
  ls "$MNT/w/checkpoints" > "$OUT/$1.checkpoints"
}
for scenario in $SCENARIOS; do
  case $scenario in
    full) mount -o remount,size=$(used)k "$MNT" ;;  # not one more page: even the lock fails
    small) mount -o remount,size=$(( $(used) + 256 ))k "$MNT" ;;  # logs fit, a checkpoint not
    back) mount -o remount,size=64m "$MNT" ;;  # space is back
  esac
  run $scenario
done
cp -a "$MNT/w" "$OUT/w"
"""


def namespace_works() -> bool:
  if shutil.which("unshare") is None:
    return False
  probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                          "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
  return probe.returncode == 0


needs_namespace = pytest.mark.skipif(
    not namespace_works(), reason="needs `unshare --user --mount` (util-linux, user namespaces)")


def at_step_32(reference, target):
  """A copy of the reference workdir as it was after epoch 1."""
  shutil.copytree(reference, target)
  shutil.rmtree(target / "checkpoints" / "64")
  (target / "results.json").unlink()
  return target


def run_on_tmpfs(data_env, tmp_path, reference, scenarios: str) -> dict:
  out = tmp_path / "out"
  out.mkdir()
  mnt = tmp_path / "mnt"
  mnt.mkdir()
  env = dict(data_env, MNT=str(mnt), OUT=str(out), PYTHON=sys.executable, CONFIG=TINY,
             REF=str(at_step_32(reference, tmp_path / "ref")), SCENARIOS=scenarios)
  subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", PROBE],
                 cwd=REPO, env=env, check=True, timeout=900)
  return {name: {"rc": int((out / f"{name}.rc").read_text()),
                 "stderr": (out / f"{name}.log").read_text(),
                 "checkpoints": (out / f"{name}.checkpoints").read_text().split()}
          for name in scenarios.split()} | {"workdir": out / "w"}


def assert_one_error_line(result: dict, starts: str) -> str:
  assert result["rc"] == 2, result["stderr"][-3000:]
  last = result["stderr"].strip().splitlines()[-1]
  assert last.startswith(starts), last
  assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
  assert sum(line.startswith("error:") for line in result["stderr"].splitlines()) == 1
  return last


@needs_namespace
def test_a_full_disk_is_one_line_and_keeps_the_checkpoint(tiny_run, data_env, tmp_path):
  """Not one free page: the first write (the trainer's lock) fails with ENOSPC."""
  reference, _ = tiny_run
  runs = run_on_tmpfs(data_env, tmp_path, reference, "full")
  last = assert_one_error_line(runs["full"], "error: no space left on the device of workdir ")
  assert "the last good checkpoint (step 32) is kept: free space, then rerun" in last
  assert runs["full"]["checkpoints"] == ["32"]


@pytest.mark.cluster
@needs_namespace
def test_a_disk_too_small_for_a_checkpoint_then_space_back_resumes(tiny_run, data_env,
                                                                    tmp_path):
  """Room for the logs but not for the next checkpoint: epoch 2 trains, its
  checkpoint is refused before orbax writes a byte, step 32 stays; with space
  back, the same command resumes from it and ends bitwise equal."""
  reference, _ = tiny_run
  runs = run_on_tmpfs(data_env, tmp_path, reference, "full small back")
  assert_one_error_line(runs["full"], "error: no space left on the device of workdir ")
  last = assert_one_error_line(runs["small"], "error: no space for checkpoint step 64 in workdir ")
  assert "the last good checkpoint (step 32) is kept" in last
  assert runs["small"]["checkpoints"] == ["32"]
  back = runs["back"]
  assert back["rc"] == 0, back["stderr"][-3000:]
  assert "resumed from" in back["stderr"] and "at step 32 (epoch 1)" in back["stderr"]
  workdir = runs["workdir"]
  assert_bitwise_equal(final_params(workdir), final_params(reference))
  assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
  ours, theirs = (json.loads((w / "results.json").read_text()) for w in (workdir, reference))
  assert ours["test_accuracy"] == theirs["test_accuracy"]
