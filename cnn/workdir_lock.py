"""One trainer per workdir: `<workdir>/trainer.lock`, held by process 0.

A second `main.py` on a workdir whose trainer is alive (a second terminal, a
retried job, an evaluation started mid-training) refuses with one line naming
the process and host, instead of training over the same checkpoints. The lock
records who holds it; it is *stale*, and taken over with a warning, when:

- its host is this host and its process is gone (checked by PID and the
  process's start time, so a reused PID does not count), or
- its host is another one and its heartbeat, rewritten every
  `HEARTBEAT_S` seconds while training, is older than `STALE_AFTER_S`.

On a multi-host job only process 0 holds and checks the lock, then tells the
others (a broadcast), so all processes of a refused job exit together. On a
local or shared POSIX filesystem the lock is created atomically (O_EXCL);
object stores (gs://) have no atomic create through epath, so there two jobs
started within the same second may both pass the check.
"""
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Iterator

from etils import epath

from cnn import workdir as workdirs
from cnn.errors import UserError

LOCK_NAME = workdirs.Workdir.LOCK
HEARTBEAT_S = 60.0
STALE_AFTER_S = 300.0


def process_start_time(pid: int) -> str | None:
  """The kernel's start time of the running process `pid` (clock ticks since
  boot), or None if there is none (a zombie, killed but not yet reaped,
  counts as gone)."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except OSError:
    return None
  return None if fields[0] in ("Z", "X") else fields[19]


def this_process() -> dict[str, Any]:
  now = time.time()
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "start": process_start_time(os.getpid()), "started": now, "heartbeat": now,
          "command": " ".join(sys.argv)}


def holder_alive(record: dict, now: float, host: str) -> bool:
  """Whether the trainer that wrote `record` is still running."""
  if record.get("host") == host:
    start = process_start_time(int(record.get("pid", -1)))
    return start is not None and start == record.get("start")
  return now - float(record.get("heartbeat", 0)) < STALE_AFTER_S


def describe(record: dict) -> str:
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
  return f"process {record.get('pid')} on host {record.get('host')} (since {since})"


def read(path: epath.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def in_use_error(workdir: str, record: dict) -> UserError:
  return UserError(f"workdir {workdir} is in use by the trainer {describe(record)}; wait for it "
                   "to finish, stop it, or choose another --workdir")


def check_free(workdir: str) -> None:
  """Raises UserError if a live trainer holds `workdir` (for `--mode=evaluate`)."""
  path = workdirs.Workdir.of(workdir).lock
  record = read(path) if path.exists() else None
  if record and holder_alive(record, time.time(), socket.gethostname()) and (
      record.get("pid") != os.getpid() or record.get("host") != socket.gethostname()):
    raise in_use_error(workdir, record)


class TrainerLock:
  """Held while training: `with TrainerLock(workdir): ...`."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = workdirs.Workdir.of(workdir).lock
    self.record = this_process()
    self._stop = threading.Event()
    self._thread = None

  def __enter__(self) -> "TrainerLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    if self.path.exists():
      record = read(self.path)
      if record and holder_alive(record, time.time(), socket.gethostname()):
        raise in_use_error(self.workdir, record)
      logging.warning("taking over the stale lock of %s in %s (that trainer is gone)",
                      describe(record or {}), self.workdir)
      self.path.unlink(missing_ok=True)
    self._create()
    self._thread = threading.Thread(target=self._beat, name="trainer-lock", daemon=True)
    self._thread.start()

  def _create(self) -> None:
    text = json.dumps(self.record)
    if workdirs.is_uri(self.workdir):
      self.path.write_text(text)
      return
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # another trainer won the race just now
      raise in_use_error(self.workdir, read(self.path) or {}) from None
    with os.fdopen(fd, "w") as f:
      f.write(text)

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      self.record["heartbeat"] = time.time()
      try:
        self.path.write_text(json.dumps(self.record))
      except OSError as e:  # a full disk must not kill training; the next beat retries
        logging.warning("could not refresh %s: %s", self.path, e)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if (read(self.path) or {}).get("pid") == self.record["pid"]:
      self.path.unlink(missing_ok=True)


def _agreed(error: UserError | None, workdir: str) -> None:
  """Raises on every process if process 0 found the workdir in use."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    refused = bool(multihost_utils.broadcast_one_to_all(np.array(error is not None)))
    if refused and error is None:
      error = UserError(f"workdir {workdir} is in use by another trainer (process 0 found its "
                        f"{LOCK_NAME}); wait for it, stop it, or choose another --workdir")
  if error is not None:
    raise error


def _on_process_0(check) -> UserError | None:
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() != 0:
    return None
  try:
    check()
  except UserError as e:
    return e
  return None


def check_no_trainer(workdir: str) -> None:
  """For `--mode=evaluate`: refuses (on every process) while a trainer is alive."""
  _agreed(_on_process_0(lambda: check_free(workdir)), workdir)


@contextlib.contextmanager
def one_trainer(workdir: str) -> Iterator[None]:
  """Process 0 holds the lock while the block trains; a job that finds it
  held refuses on every process."""
  lock = TrainerLock(workdir)
  import jax  # pylint: disable=import-outside-toplevel
  holder = jax.process_index() == 0
  _agreed(_on_process_0(lock.acquire), workdir)
  try:
    yield
  finally:
    if holder:
      lock.release()
