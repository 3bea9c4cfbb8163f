"""A run's workdir: every file and folder a run writes, named once (etils.epath).

`Workdir.of(workdir)` takes the `--workdir` string as the user gave it (or a
`Workdir`, returned as is) and names everything under it:

  checkpoints/           orbax steps (`checkpoint(step)`: one of them)
  damaged_checkpoints/   steps that did not read, moved aside on resume
  results.json           the finished run's numbers
  metrics.jsonl          one record per epoch
  timing.jsonl           one record per epoch: wall time, images/s
  steps.jsonl            one record per window of steps
  trainer.lock           who is training here (cnn/workdir_lock.py)
  report/                --mode=evaluate's pages, figures and JSON
  tensorboard/           TensorBoard events
  predictions/           --mode=predict's output, unless --out says otherwise

A seed sweep's workdir (`config.sweep.seeds`) holds one such workdir per seed,
`seed_<s>/` (`seed(s)`), and `sweep.json`, the summary of their results.

A local directory becomes absolute, and a URI (`gs://bucket/run`, or any
scheme epath and tensorstore know) stays exactly as given, so on a pod every
host reads and writes the same bucket instead of its own
`<cwd>/gs:/bucket/run`. `str(workdir)` is the string as given: error lines
name the workdir the way the user wrote it.
"""
import dataclasses
import functools
import os
from typing import ClassVar

from etils import epath


def is_uri(path: "str | os.PathLike") -> bool:
  return "://" in str(path)


def resolve(path: "str | os.PathLike") -> epath.Path:
  """`path` as an epath.Path: URIs untouched, local paths made absolute."""
  if is_uri(path):
    return epath.Path(str(path))
  return epath.Path(os.path.abspath(os.path.expanduser(str(path))))


@dataclasses.dataclass(frozen=True)
class Workdir:
  """The files and folders of one run's workdir (module docstring)."""
  given: str
  LOCK: ClassVar[str] = "trainer.lock"  # also read by tools that look at a workdir from outside

  @classmethod
  def of(cls, workdir: "str | os.PathLike | Workdir") -> "Workdir":
    return workdir if isinstance(workdir, Workdir) else cls(str(workdir))

  def __str__(self) -> str:
    return self.given

  @property
  def is_uri(self) -> bool:
    return is_uri(self.given)

  @functools.cached_property
  def path(self) -> epath.Path:
    return resolve(self.given)

  @property
  def checkpoints(self) -> epath.Path:
    return self.path / "checkpoints"

  def checkpoint(self, step: int) -> epath.Path:
    return self.checkpoints / str(step)

  @property
  def damaged_checkpoints(self) -> epath.Path:
    return self.path / "damaged_checkpoints"

  @property
  def results(self) -> epath.Path:
    return self.path / "results.json"

  @property
  def metrics(self) -> epath.Path:
    return self.path / "metrics.jsonl"

  @property
  def timing(self) -> epath.Path:
    return self.path / "timing.jsonl"

  @property
  def steps(self) -> epath.Path:
    return self.path / "steps.jsonl"

  @property
  def lock(self) -> epath.Path:
    return self.path / self.LOCK

  @property
  def report(self) -> epath.Path:
    return self.path / "report"

  @property
  def tensorboard(self) -> epath.Path:
    return self.path / "tensorboard"

  @property
  def predictions(self) -> epath.Path:
    return self.path / "predictions"

  def seed(self, seed: int) -> "Workdir":
    """The workdir of one seed of a sweep, named the way the user named this one."""
    return Workdir(f"{self.given.rstrip('/')}/seed_{seed}")

  @property
  def sweep(self) -> epath.Path:
    return self.path / "sweep.json"
