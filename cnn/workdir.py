"""The one path abstraction for everything a run writes (etils.epath).

Checkpoints, metrics, TensorBoard events, `results.json` and the report all
go through `resolve(workdir)`: a local directory becomes absolute, and a URI
(`gs://bucket/run`, or any scheme epath and tensorstore know) stays exactly
as given, so on a pod every host reads and writes the same bucket instead of
its own `<cwd>/gs:/bucket/run`.
"""
import os

from etils import epath


def is_uri(workdir: str) -> bool:
  return "://" in str(workdir)


def resolve(workdir: str) -> epath.Path:
  """`workdir` as an epath.Path: URIs untouched, local paths made absolute."""
  if is_uri(workdir):
    return epath.Path(str(workdir))
  return epath.Path(os.path.abspath(os.path.expanduser(str(workdir))))
