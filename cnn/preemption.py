"""Stopping at the next step when the job is told to go (SIGTERM).

Schedulers (SLURM, Kubernetes, preemptible cloud VMs) send SIGTERM some
seconds before they kill a job. The handler only sets a flag; the training
loop checks it between steps, saves a checkpoint and exits cleanly.
"""
import contextlib
import signal
import threading
from typing import Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils


@contextlib.contextmanager
def sigterm_flag() -> Iterator[Callable[[], bool]]:
  """Yields a function telling whether SIGTERM arrived in this process."""
  received = threading.Event()
  previous = signal.signal(signal.SIGTERM, lambda *_: received.set())
  try:
    yield received.is_set
  finally:
    signal.signal(signal.SIGTERM, previous)


def agreed_stop(local_request: bool) -> bool:
  """All processes must stop at the same step: any process's request counts.
  With several processes this is a collective (every process must call it at
  the same step) and waits for the device."""
  if jax.process_count() == 1:
    return local_request
  return bool(np.any(multihost_utils.process_allgather(np.array(local_request))))


def stop_now(stop_requested: Callable[[], bool], at_sync_point: bool) -> bool:
  """Whether to stop after this step. One process checks its own flag every
  step (free). Several processes agree only at sync points (every
  `log_every_steps` and each epoch's end, where the loop waits for the
  device anyway), so SIGTERM costs no per-step host sync; the stop then comes
  within `log_every_steps` steps."""
  if jax.process_count() == 1:
    return stop_requested()
  return agreed_stop(stop_requested()) if at_sync_point else False
