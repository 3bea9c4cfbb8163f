"""A directory carried between machines as parts of at most N MiB: one tar
stream cut into files, with a manifest of their sizes and SHA-256s.

The accelerator kit's DIR (state, results, the checkpoints a training row
resumes from) must travel through transfers of ~64 MiB: VGG-16's checkpoint
with its momentum alone is ~120 MB. `pack` never includes what `skip` names
(locks, temporary files) or unfinished checkpoints; `unpack` checks every
part before extracting into a staging folder and renaming it into place.
"""
import datetime
import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Callable

from cnn.errors import UserError

MIB = 2**20
TMP_MARK = ".orbax-checkpoint-tmp"  # a checkpoint being written: never carried


def files_to_pack(out: Path, skip: Callable[[str], bool]) -> list[Path]:
  """What travels: every file but those `skip` names and unfinished checkpoints."""
  found = []
  for root, dirs, names in os.walk(out):
    dirs[:] = sorted(d for d in dirs if TMP_MARK not in d)
    found += [Path(root) / n for n in sorted(names) if TMP_MARK not in n and not skip(n)]
  return found


class PartWriter:
  """A write-only stream cut into files of at most `part_bytes` each."""

  def __init__(self, parts_dir: Path, stem: str, part_bytes: int):
    self.parts_dir, self.stem, self.part_bytes = parts_dir, stem, part_bytes
    self.parts: list[dict] = []
    self._file = self._hash = None

  def _next(self) -> None:
    self._finish()
    name = f"{self.stem}.tar.{len(self.parts):03d}"
    self.parts.append({"file": name, "bytes": 0})
    self._file, self._hash = open(self.parts_dir / name, "wb"), hashlib.sha256()

  def _finish(self) -> None:
    if self._file:
      self._file.close()
      self.parts[-1]["sha256"] = self._hash.hexdigest()
      self._file = None

  def write(self, data: bytes) -> int:
    view = memoryview(data)
    while view:
      if self._file is None or self.parts[-1]["bytes"] == self.part_bytes:
        self._next()
      chunk = view[:self.part_bytes - self.parts[-1]["bytes"]]
      self._file.write(chunk)
      self._hash.update(chunk)
      self.parts[-1]["bytes"] += len(chunk)
      view = view[len(chunk):]
    return len(data)

  def close(self) -> None:
    self._finish()



class PartReader:
  """The parts read back as one stream."""

  def __init__(self, paths: list[Path]):
    self._paths, self._file = list(paths), None

  def read(self, size: int = -1) -> bytes:
    data = b""
    while size < 0 or len(data) < size:
      if self._file is None:
        if not self._paths:
          break
        self._file = open(self._paths.pop(0), "rb")
      chunk = self._file.read(-1 if size < 0 else size - len(data))
      if not chunk:
        self._file.close()
        self._file = None
      data += chunk
    return data



def default_parts_dir(out: Path) -> Path:
  return out.parent / f"{out.name}-parts"


def pack(out: Path, parts_dir: Path, part_bytes: int, skip: Callable[[str], bool]) -> dict:
  """Writes `out` as parts into `parts_dir` (replacing an earlier packing of
  it) and returns the manifest, also written as `<name>.pack.json`."""
  parts_dir.mkdir(parents=True, exist_ok=True)
  for old in [*parts_dir.glob(f"{out.name}.tar.*"), parts_dir / f"{out.name}.pack.json"]:
    old.unlink(missing_ok=True)
  files = files_to_pack(out, skip)
  writer = PartWriter(parts_dir, out.name, part_bytes)
  with tarfile.open(fileobj=writer, mode="w|") as tar:
    for path in files:
      tar.add(path, arcname=str(path.relative_to(out)), recursive=False)
  writer.close()
  manifest = {"dir": out.name, "created": datetime.datetime.now().isoformat(timespec="seconds"),
              "files": len(files), "bytes": sum(p.stat().st_size for p in files),
              "parts": writer.parts}
  (parts_dir / f"{out.name}.pack.json").write_text(json.dumps(manifest, indent=1) + "\n")
  return manifest


def verified_parts(parts_dir: Path) -> tuple[dict, list[Path]]:
  manifests = sorted(parts_dir.glob("*.pack.json"))
  if len(manifests) != 1:
    raise UserError(f"{parts_dir} should hold one *.pack.json (found {len(manifests)}); "
                    "copy the manifest that `pack` wrote with the parts")
  manifest = json.loads(manifests[0].read_text())
  bad = []
  for part in manifest["parts"]:
    path = parts_dir / part["file"]
    if not path.is_file() or path.stat().st_size != part["bytes"] or \
        hashlib.sha256(path.read_bytes()).hexdigest() != part["sha256"]:
      bad.append(part["file"])
  if bad:
    raise UserError(f"missing or damaged parts in {parts_dir}: {', '.join(bad)}; copy them again")
  return manifest, [parts_dir / p["file"] for p in manifest["parts"]]



def unpack(parts_dir: Path, out: Path, replace: bool) -> dict:
  """Extracts the verified parts into `out`; returns the manifest."""
  if out.exists() and any(out.iterdir()) and not replace:
    raise UserError(f"{out} is not empty; unpack into a new --out, or pass --replace")
  manifest, parts = verified_parts(parts_dir)
  staging = out.parent / f".{out.name}.unpacking"
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir(parents=True)
  extract = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
  with tarfile.open(fileobj=PartReader(parts), mode="r|") as tar:
    tar.extractall(staging, **extract)
  if out.exists():
    shutil.rmtree(out)
  staging.rename(out)
  return manifest
