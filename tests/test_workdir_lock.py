"""One trainer per workdir, with real processes: a second trainer or an
evaluation on a workdir whose trainer is alive refuses in one line naming it;
the lock of a killed trainer does not block the next run."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cnn import workdir_lock
from conftest import REPO, run_main

TINY = ["--config=configs/tiny_mnist.py", "--config.num_epochs=3"]


def test_holder_liveness_by_pid_start_time_and_heartbeat():
  host, now = socket.gethostname(), time.time()
  me = workdir_lock.this_process()
  assert workdir_lock.holder_alive(me, now, host)
  assert not workdir_lock.holder_alive({**me, "start": "1"}, now, host)  # a reused PID
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()
  assert not workdir_lock.holder_alive({**me, "pid": child.pid}, now, host)  # gone
  other = {**me, "host": "another-host"}
  assert workdir_lock.holder_alive({**other, "heartbeat": now - 10}, now, host)
  assert not workdir_lock.holder_alive(
      {**other, "heartbeat": now - workdir_lock.STALE_AFTER_S - 1}, now, host)


@pytest.mark.slow
def test_second_trainer_and_evaluation_refuse_and_a_killed_trainer_does_not_block(
    data_env, mnist, tmp_path):
  workdir = tmp_path / "run"
  # A long first run (killed below), so it cannot finish while the others check.
  first = subprocess.Popen([sys.executable, "main.py", *TINY, "--config.num_epochs=50",
                            f"--workdir={workdir}"],
                           cwd=REPO, env=data_env, stderr=subprocess.PIPE, text=True)
  try:
    for line in first.stderr:  # training has started
      if "epoch 1/50 step" in line:
        break
    expected = (f"error: workdir {workdir} is in use by the trainer process {first.pid} on host "
                f"{socket.gethostname()}")
    for mode in ("train", "evaluate"):
      second = run_main(data_env, *TINY, f"--workdir={workdir}", f"--mode={mode}", check=False)
      assert second.returncode == 2, second.stderr[-2000:]
      assert second.stderr.strip().splitlines()[-1].startswith(expected)
      assert "Traceback" not in second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
  finally:
    first.kill()
  assert (workdir / workdir_lock.LOCK_NAME).exists()  # left behind by kill -9
  third = run_main(data_env, *TINY, f"--workdir={workdir}", "--config.num_epochs=1")
  assert "taking over the stale lock of process" in third.stderr
  assert (workdir / "results.json").exists()
  assert not (workdir / workdir_lock.LOCK_NAME).exists()  # released at the end
