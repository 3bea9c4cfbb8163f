"""Where metrics go: JSON-lines histories (per epoch, per window of steps), TensorBoard
events and the console.

Only process 0 writes (see `train.py`); everything here is host-side.
TensorBoard events are written through flax's writer, which needs
TensorFlow; without it (accelerator images) they are skipped with one log
line, and the JSON-lines files still hold every number.
"""
import json
import logging
import time
from typing import Sequence

import numpy as np
from etils import epath

from cnn import workdir as workdirs
from cnn.schema import Section, Setting, positive

CONFIG = Section("log", "progress lines", {
    "every_steps": Setting(100, "a progress line (loss, accuracy, images/s, ETA) every this "
                           "many steps", positive, "> 0"),
}, renamed={"log_every_steps": "every_steps"})


def write_jsonl(path: epath.Path, records: list[dict]) -> None:
  """(Re)writes a JSON-lines file: atomically on a local disk (write, then
  rename); object stores write whole objects atomically by themselves."""
  text = "".join(json.dumps(r) + "\n" for r in records)
  if workdirs.is_uri(path):
    path.write_text(text)
    return
  tmp = path.with_suffix(".jsonl.tmp")
  tmp.write_text(text)
  tmp.replace(path)


def read_jsonl(path: epath.Path) -> list[dict]:
  """The records of a JSON-lines file written by `write_jsonl`."""
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tensorboard_writer(logdir: str):
  """flax's TensorBoard writer, or None where TensorFlow is not installed."""
  try:
    from flax.metrics import tensorboard  # pylint: disable=import-outside-toplevel
  except ImportError:
    logging.info("TensorBoard events skipped (no tensorflow); metrics.jsonl and timing.jsonl "
                 "hold every number")
    return None
  return tensorboard.SummaryWriter(logdir)


def window_record(step: int, losses: Sequence[float], learning_rate: float) -> dict:
  """One line of `steps.jsonl`: the batch losses of the `len(losses)` steps
  ending at `step` (mean, min, max: a spike shows in the max even where the
  epoch's mean hides it) and the learning rate there."""
  losses = [float(x) for x in losses]
  return {"step": step, "steps": len(losses), "loss": sum(losses) / len(losses),
          "loss_min": min(losses), "loss_max": max(losses), "learning_rate": learning_rate}


class MetricWriter:
  """Writes each epoch to `metrics.jsonl` (the metrics: deterministic for a
  config and seed) and `timing.jsonl` (wall times and speeds), each window of
  `log_every_steps` steps to `steps.jsonl` (batch losses: deterministic
  too), and all of them to TensorBoard.

  The JSON-lines files are rewritten from the full history each time, so
  after a resume they hold each epoch and each step window exactly once.
  """

  def __init__(self, workdir: str, steps_written: int = 0):
    self._workdir = workdirs.Workdir.of(workdir)
    self._tensorboard = tensorboard_writer(str(self._workdir.tensorboard))
    self._steps_written = steps_written  # step records already in TensorBoard

  def write_epoch(self, history: list[dict], timing: list[dict]) -> None:
    if self._tensorboard:
      for record in (history[-1], timing[-1]):
        for key, value in record.items():
          if key not in ("epoch", "step") and isinstance(value, (int, float)):
            self._tensorboard.scalar(key, value, record["epoch"])
      self._tensorboard.flush()
    write_jsonl(self._workdir.metrics, history)
    write_jsonl(self._workdir.timing, timing)

  def write_steps(self, steps: list[dict]) -> None:
    """After each window: a long epoch's losses can be watched as they come."""
    if self._tensorboard:
      for record in steps[self._steps_written:]:
        for key in ("loss", "loss_max"):
          self._tensorboard.scalar(f"step/{key}", record[key], record["step"])
      self._tensorboard.flush()
    self._steps_written = len(steps)
    write_jsonl(self._workdir.steps, steps)

  def close(self) -> None:
    if self._tensorboard:
      self._tensorboard.close()


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
  """Console progress line: step, loss, images/s and time left for the run."""

  def __init__(self, total_steps: int, steps_per_epoch: int, global_batch_size: int,
               start_step: int):
    self._total, self._per_epoch, self._batch = total_steps, steps_per_epoch, global_batch_size
    self._last_step, self._last_time = start_step, time.perf_counter()

  def reset_clock(self, step: int) -> None:
    """Call after compilation so its seconds do not count as training speed."""
    self._last_step, self._last_time = step, time.perf_counter()

  def report(self, step: int, loss, accuracy) -> None:
    """`loss` and `accuracy` of the epoch so far; a seed sweep's, one per seed, are averaged."""
    loss, accuracy = float(np.mean(loss)), float(np.mean(accuracy))
    now = time.perf_counter()
    steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    epoch, in_epoch = divmod(step - 1, self._per_epoch)
    eta = (self._total - step) / max(steps_per_s, 1e-9)
    logging.info("epoch %d/%d step %d/%d | loss %.4f acc %.4f | %.0f img/s | ETA %s",
                 epoch + 1, -(-self._total // self._per_epoch), in_epoch + 1, self._per_epoch,
                 loss, accuracy, steps_per_s * self._batch, format_duration(eta))
