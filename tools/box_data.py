"""The datasets carried to the borrowed box as parts: CIFAR-10 in as few
commands as possible, rebuilt there bit for bit and checked against the
official checksums before anything trains.

  python tools/box_data.py write --archive-dir DIR --datasets cifar10[,mnist] --out .box/data
  python tools/box_data.py add --part P --manifest M --staging /tmp/cnnbox/parts    # on the box
  python tools/box_data.py assemble --staging S --manifest M --data-dir /tmp/cnnbox/data

Each command may send 64 MiB, the checkout included, and CIFAR-10's six
batches are 184 MB that xz alone shrinks only to 75 %. Predicting every pixel
from its left, upper and upper-left neighbours (LOCO-I's median edge
detector, the JPEG-LS predictor: Weinberger, Seroussi & Sapiro 2000, sec. 2.2)
and subtracting G's residual from R's and B's (a reversible colour transform)
leaves residuals that xz packs to 55 % of raw: 101 MB, two parts beside the
9 MB tree. Labels go first and the residuals one colour plane at a time
(R of every image, then G, then B), and LZMA2 gets 4 literal-context bits
(lc=4, lp=0, pb=0): together 1 point smaller than the batch's own record
order; xz's EXTREME flag gained 0.01 point for twice the time. MNIST's .gz
files travel as they are: their official checksums are of those bytes.

`write` checks every source file against its official checksum, then writes
one stream, cut into out/part1.bin, part2.bin, ... of at most `part_bytes`,
and out/manifest.json. The stream is a magic line, then per file a 4-byte
big-endian header length, a JSON header (path under the archive dir, codec,
checksum and its algorithm, raw and encoded sizes) and the encoded bytes.
`add` checks one part against the manifest and stages it outside the
checkout; `assemble` checks every staged part, decodes, checks each rebuilt
file against its official checksum, and only then renames the datasets into
the data dir (laid out as CNN_ARCHIVE_DIR: cifar10/cifar-10-batches-bin/,
mnist/). Exit status 2 with one line for what a user can fix.

The box's python3 has numpy but no ml_collections until the carried wheels
are installed, so this file imports the standard library, numpy,
cnn/errors.py and cnn/datasets/archives.py (loaded alone: its package's
__init__ imports the config machinery), nothing else.
"""
import argparse
import concurrent.futures
import hashlib
import importlib.util
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script

from cnn.errors import UserError, unknown_name  # noqa: E402


def _archives_module():
  """cnn/datasets/archives.py (the official checksums, `digest`, `check`),
  without running cnn/datasets/__init__.py: that imports ml_collections,
  which the box lacks until the wheels are installed."""
  if "cnn.datasets.archives" in sys.modules:
    return sys.modules["cnn.datasets.archives"]
  spec = importlib.util.spec_from_file_location("_box_data_archives",
                                                ROOT / "cnn" / "datasets" / "archives.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


archives = _archives_module()

MIB = 2**20
SEND_BYTES = 64 * MIB  # what one device-tool command may send, the checkout included
MARGIN_BYTES = MIB  # the manifest, and a tree that grows a little before the visit
MAGIC = b"cnn-box-data 1\n"
MANIFEST = "manifest.json"
CIFAR_RECORD = 1 + 3 * 32 * 32  # CIFAR-10: one label byte, then R, G, B planes of 32x32
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9, "lc": 4, "lp": 0, "pb": 0}]
CODECS = {
    "raw": "the file's bytes as they are",
    "cifar-med-xz": (
        "CIFAR binary batch: the labels, then for each colour plane (R, G, B) every image's "
        "residual from the LOCO-I/JPEG-LS median edge predictor (left, up, up-left in the "
        "plane, 0 outside the image) mod 256, R's and B's minus G's, as one xz stream "
        "(LZMA2 preset 9, lc=4 lp=0 pb=0)"),
}


# --- the CIFAR codec -------------------------------------------------------

def med(left: np.ndarray, up: np.ndarray, up_left: np.ndarray) -> np.ndarray:
  """LOCO-I's median edge detector: the smaller neighbour under an edge above
  or to the left, the larger over one, else the plane through the three. In
  uint8, left + up - up_left wraps only where it is not chosen."""
  high, low = np.maximum(left, up), np.minimum(left, up)
  return np.where(up_left >= high, low, np.where(up_left <= low, high, left + up - up_left))


def med_residuals(planes: np.ndarray) -> np.ndarray:
  """uint8 [..., H, W] -> each pixel minus its prediction, mod 256 (all at once:
  the predictor reads only the original pixels)."""
  padded = np.pad(planes, [(0, 0)] * (planes.ndim - 2) + [(1, 0), (1, 0)])
  return planes - med(padded[..., 1:, :-1], padded[..., :-1, 1:], padded[..., :-1, :-1])


def med_inverse(residuals: np.ndarray) -> np.ndarray:
  """The planes back from `med_residuals`: a pixel needs its rebuilt neighbours,
  so H*W steps, each over every image and plane at once (position-major, so
  each step reads contiguous memory)."""
  h, w = residuals.shape[-2:]
  res = np.ascontiguousarray(np.moveaxis(residuals, (-2, -1), (0, 1)))
  x = np.zeros((h + 1, w + 1, *res.shape[2:]), np.uint8)  # row and column 0: outside, 0
  for i in range(h):
    for j in range(w):
      x[i + 1, j + 1] = res[i, j] + med(x[i + 1, j], x[i, j + 1], x[i, j])
  return np.moveaxis(x[1:, 1:], (0, 1), (-2, -1))


def encode_cifar(raw: bytes) -> bytes:
  """A CIFAR-10 batch -> labels + plane-major colour-transformed MED residuals, xz'd."""
  rows = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
  res = med_residuals(rows[:, 1:].reshape(-1, 3, 32, 32))
  res[:, 0] -= res[:, 1]
  res[:, 2] -= res[:, 1]
  body = rows[:, 0].tobytes() + res.transpose(1, 0, 2, 3).tobytes()
  return lzma.compress(body, format=lzma.FORMAT_XZ, filters=LZMA_FILTERS)


def decode_cifar(encoded: bytes) -> bytes:
  body = np.frombuffer(lzma.decompress(encoded, format=lzma.FORMAT_XZ), np.uint8)
  n = len(body) // CIFAR_RECORD
  res = body[n:].reshape(3, n, 32, 32).transpose(1, 0, 2, 3).copy()
  res[:, 0] += res[:, 1]
  res[:, 2] += res[:, 1]
  rows = np.empty((n, CIFAR_RECORD), np.uint8)
  rows[:, 0] = body[:n]
  rows[:, 1:] = med_inverse(res).reshape(n, -1)
  return rows.tobytes()


ENCODE: dict[str, Callable[[bytes], bytes]] = {"raw": bytes, "cifar-med-xz": encode_cifar}
DECODE: dict[str, Callable[[bytes], bytes]] = {"raw": bytes, "cifar-med-xz": decode_cifar}


# --- what each dataset carries ---------------------------------------------

def cifar10_files() -> list[dict]:
  """The extracted batches (official sha1s) and the class names file, which has
  no published checksum: its SHA-256 is taken from the source when written."""
  layout = archives.CIFAR["cifar10"]
  files = [{"path": f"cifar10/{layout.prefix}/{name}", "codec": "cifar-med-xz",
            "algorithm": "sha1", "checksum": archives.SHA1_EXTRACTED[f"{layout.prefix}/{name}"],
            "official": True} for name in (*layout.train, *layout.test)]
  files.append({"path": f"cifar10/{layout.prefix}/{layout.names_file}", "codec": "raw",
                "algorithm": "sha256", "checksum": None, "official": False})
  return files


def idx_files(dataset: str) -> list[dict]:
  """MNIST-style .gz files as they are: their official sha256s are of the .gz bytes."""
  return [{"path": f"{dataset}/{name}", "codec": "raw", "algorithm": "sha256",
           "checksum": checksum, "official": True}
          for (owner, name), checksum in sorted(archives.SHA256.items()) if owner == dataset]


DATASETS: dict[str, Callable[[], list[dict]]] = {
    "cifar10": cifar10_files, "mnist": lambda: idx_files("mnist"),
    "fashion_mnist": lambda: idx_files("fashion_mnist")}


def source_files(archive_dir: Path, datasets: Sequence[str]) -> list[dict]:
  """The files of `datasets`, each checked against its official checksum."""
  files = []
  for dataset in dict.fromkeys(datasets):
    if dataset not in DATASETS:
      raise unknown_name("dataset", dataset, DATASETS)
    for entry in DATASETS[dataset]():
      path = archive_dir / entry["path"]
      if not path.is_file():
        raise UserError(f"{path} is missing: put the original {dataset} files under "
                        f"{archive_dir}/{dataset}/ (CIFAR-10's batches extracted)")
      if entry["official"]:
        archives.check(path, entry["checksum"], entry["algorithm"])
      else:
        entry = {**entry, "checksum": archives.digest(path, entry["algorithm"])}
      files.append(entry)
  return files


# --- the stream and its parts ----------------------------------------------

def _in_threads(function: Callable, items: list) -> list:
  """`function` over `items` in order; xz and numpy release the GIL, so the
  files are encoded (and decoded) side by side."""
  workers = max(1, min(4, os.cpu_count() or 1, len(items)))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(function, items))


def encode_stream(archive_dir: Path, files: list[dict]) -> tuple[bytes, list[dict]]:
  """The one stream and each file's header (with its sizes)."""
  def encode(entry: dict) -> tuple[dict, bytes]:
    raw = (archive_dir / entry["path"]).read_bytes()
    encoded = ENCODE[entry["codec"]](raw)
    return {**entry, "raw_bytes": len(raw), "encoded_bytes": len(encoded)}, encoded
  pieces, headers = [MAGIC], []
  for header, encoded in _in_threads(encode, files):
    text = json.dumps(header, sort_keys=True).encode()
    pieces += [len(text).to_bytes(4, "big"), text, encoded]
    headers.append(header)
  return b"".join(pieces), headers


def decode_stream(stream: memoryview) -> list[tuple[dict, bytes]]:
  """(header, rebuilt bytes) per file of `encode_stream`'s stream."""
  if bytes(stream[:len(MAGIC)]) != MAGIC:
    raise UserError("the staged parts are not a box_data stream: write them again with "
                    "`python tools/box_data.py write`")
  entries, at = [], len(MAGIC)
  while at < len(stream):
    size = int.from_bytes(stream[at:at + 4], "big")
    header = json.loads(bytes(stream[at + 4:at + 4 + size]))
    at += 4 + size
    entries.append((header, stream[at:at + header["encoded_bytes"]]))
    at += header["encoded_bytes"]
  return list(zip([h for h, _ in entries],
                  _in_threads(lambda e: DECODE[e[0]["codec"]](e[1]), entries)))


def cut(stream: bytes, part_bytes: int) -> list[bytes]:
  return [stream[i:i + part_bytes] for i in range(0, len(stream), part_bytes)]


def write_parts(archive_dir: Path, datasets: Sequence[str], out_dir: Path,
                part_bytes: int) -> dict:
  """`datasets` from `archive_dir` (checked) as out_dir/part1.bin, ... of at most
  `part_bytes` and out_dir/manifest.json (returned). Same inputs, same bytes:
  the manifest holds no date, and the files go in a fixed order."""
  if part_bytes < 1:
    raise UserError(f"parts of {part_bytes} bytes cannot hold anything: pass a larger --part-mib")
  stream, headers = encode_stream(Path(archive_dir), source_files(Path(archive_dir), datasets))
  out_dir.mkdir(parents=True, exist_ok=True)
  for old in [out_dir / MANIFEST, *out_dir.glob("part*.bin")]:  # the manifest first: a
    old.unlink(missing_ok=True)  # cut-short write leaves no manifest naming stale parts
  parts = []
  for number, data in enumerate(cut(stream, part_bytes), 1):
    (out_dir / f"part{number}.bin").write_bytes(data)
    parts.append({"name": f"part{number}.bin", "bytes": len(data),
                  "sha256": hashlib.sha256(data).hexdigest()})
  manifest = {"format": MAGIC.decode().strip(), "datasets": list(dict.fromkeys(datasets)),
              "codecs": {c: CODECS[c] for c in sorted({h["codec"] for h in headers})},
              "raw_bytes": sum(h["raw_bytes"] for h in headers), "encoded_bytes": len(stream),
              "parts": parts, "files": headers}
  tmp = out_dir / f"{MANIFEST}.tmp"
  tmp.write_text(json.dumps(manifest, indent=1) + "\n")
  tmp.replace(out_dir / MANIFEST)
  return manifest


def tree_bytes(repo: Path) -> int:
  """What every command sends anyway: tracked files and untracked ones git does not ignore."""
  listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo,
                          capture_output=True)
  if listed.returncode:
    raise UserError(f"{repo} is not a git checkout ({listed.stderr.decode().strip()[:100]}); "
                    "pass --part-mib")
  paths = [repo / os.fsdecode(name) for name in listed.stdout.split(b"\0") if name]
  return sum(p.lstat().st_size for p in paths if p.is_file() or p.is_symlink())


def default_part_bytes(repo: Path, carried_extra_bytes: int) -> int:
  """The largest part one command can send beside the tree and `carried_extra_bytes`."""
  tree = tree_bytes(repo)
  part = SEND_BYTES - tree - carried_extra_bytes - MARGIN_BYTES
  if part < MIB:
    raise UserError(f"the checkout ({tree / MIB:.1f} MiB) and {carried_extra_bytes / MIB:.1f} "
                    "MiB carried leave no room for a data part in 64 MiB: remove large "
                    "untracked files, or carry less")
  return part


# --- on the box ------------------------------------------------------------

def read_manifest(manifest: Path) -> dict:
  if not manifest.is_file():
    raise UserError(f"no manifest at {manifest}: carry the manifest.json that `write` "
                    "wrote with the parts")
  return json.loads(manifest.read_text())


def part_damage(path: Path, expected: dict) -> str | None:
  """Why `path` is not the part the manifest describes, or None."""
  size = path.stat().st_size
  if size != expected["bytes"]:
    return f"{size} bytes, not {expected['bytes']}"
  if archives.digest(path, "sha256") != expected["sha256"]:
    return "its SHA-256 is not the manifest's"
  return None


def add_part(part: Path, manifest: Path, staging: Path) -> None:
  """Checks `part` against the manifest and copies it into `staging` (outside
  the checkout, so that it outlives this command while the box stays warm)."""
  parts = read_manifest(manifest)["parts"]
  by_name = {p["name"]: p for p in parts}
  if part.name not in by_name:
    raise UserError(f"{part.name} is not a part of {manifest} ({', '.join(by_name)}): carry "
                    "the parts that `write` wrote with this manifest")
  if not part.is_file():
    raise UserError(f"{part} is missing: carry it with this command")
  damage = part_damage(part, by_name[part.name])
  if damage:
    raise UserError(f"part {part.name} is damaged ({damage}): carry it again")
  staging.mkdir(parents=True, exist_ok=True)
  tmp = staging / f".{part.name}.tmp"
  shutil.copyfile(part, tmp)
  tmp.replace(staging / part.name)


def _numbers(indices: list[int]) -> str:
  return ", ".join(map(str, indices))


def staged_parts(staging: Path, parts: list[dict]) -> list[Path]:
  """Every part in `staging`, each checked again (a box's disk is not ours)."""
  paths = [staging / p["name"] for p in parts]
  missing = [i for i, path in enumerate(paths, 1) if not path.is_file()]
  if missing:
    few = len(missing) == 1
    raise UserError(f"part{'' if few else 's'} {_numbers(missing)} of {len(parts)} "
                    f"{'is' if few else 'are'} missing from {staging}: run the visit's "
                    f"command{'' if few else 's'} {_numbers(missing)} again")
  damaged = [i for i, (path, part) in enumerate(zip(paths, parts), 1) if part_damage(path, part)]
  if damaged:
    few = len(damaged) == 1
    raise UserError(f"part{'' if few else 's'} {_numbers(damaged)} of {len(parts)} in "
                    f"{staging} {'is' if few else 'are'} damaged: run the visit's "
                    f"command{'' if few else 's'} {_numbers(damaged)} again")
  return paths


def _rebuild(entries: list[tuple[dict, bytes]], wanted: list[dict], into: Path) -> list[Path]:
  """Writes each rebuilt file under `into`, checked against its official checksum."""
  if [h["path"] for h, _ in entries] != [f["path"] for f in wanted]:
    raise UserError("the staged parts hold other files than the manifest names: carry the "
                    "manifest written with these parts")
  written = []
  for header, data in entries:
    relative = Path(header["path"])
    if relative.is_absolute() or ".." in relative.parts:
      raise UserError(f"the stream names {relative}, outside the data dir: write the parts again")
    path = into / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if archives.digest(path, header["algorithm"]) != header["checksum"]:
      raise UserError(f"{relative} rebuilt is not the original (its {header['algorithm']} "
                      "differs): write the parts again here with `python tools/box_data.py "
                      "write` and carry them all")
    written.append(relative)
  return written


def assemble(staging: Path, manifest: Path, data_dir: Path) -> list[Path]:
  """The datasets rebuilt under `data_dir` (as CNN_ARCHIVE_DIR), all or nothing:
  decoded into a hidden sibling folder and each dataset's folder renamed into
  place (replacing an earlier one) only once every file matched its official
  checksum. Returns the files."""
  start = time.monotonic()
  spec = read_manifest(manifest)
  paths = staged_parts(staging, spec["parts"])
  stream = bytearray()
  for path in paths:
    stream += path.read_bytes()
  building = data_dir.parent / f".{data_dir.name}.assembling"
  shutil.rmtree(building, ignore_errors=True)
  building.mkdir(parents=True)
  try:
    written = _rebuild(decode_stream(memoryview(stream)), spec["files"], building)
    data_dir.mkdir(parents=True, exist_ok=True)
    for folder in sorted(building.iterdir()):
      if (data_dir / folder.name).exists():
        shutil.rmtree(data_dir / folder.name)
      folder.rename(data_dir / folder.name)
  finally:
    shutil.rmtree(building, ignore_errors=True)
  print(f"assembled {len(written)} files ({spec['raw_bytes'] / 1e6:.1f} MB, "
        f"{', '.join(spec['datasets'])}) in {data_dir}, official checksums matched, in "
        f"{time.monotonic() - start:.1f} s", flush=True)
  return [data_dir / p for p in written]


# --- command line ----------------------------------------------------------

def command_write(args: argparse.Namespace) -> int:
  start = time.monotonic()
  part_bytes = (int(args.part_mib * MIB) if args.part_mib is not None
                else default_part_bytes(ROOT, 0))
  datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
  manifest = write_parts(Path(args.archive_dir), datasets, Path(args.out), part_bytes)
  for part in manifest["parts"]:
    print(f"{args.out}/{part['name']}  {part['bytes'] / MIB:.1f} MiB")
  raw, encoded, count = manifest["raw_bytes"], manifest["encoded_bytes"], len(manifest["parts"])
  print(f"{','.join(manifest['datasets'])}: {raw / 1e6:.1f} MB -> {encoded / 1e6:.1f} MB "
        f"({100 * encoded / raw:.1f} % of raw) in {count} part{'s' * (count > 1)} of at most "
        f"{part_bytes / MIB:.1f} MiB: {count} command{'s' * (count > 1)}; encoded in "
        f"{time.monotonic() - start:.0f} s")
  return 0


def command_add(args: argparse.Namespace) -> int:
  add_part(Path(args.part), Path(args.manifest), Path(args.staging))
  parts = [p["name"] for p in read_manifest(Path(args.manifest))["parts"]]
  print(f"part {parts.index(Path(args.part).name) + 1} of {len(parts)} checked and staged in "
        f"{args.staging}")
  return 0


def command_assemble(args: argparse.Namespace) -> int:
  assemble(Path(args.staging), Path(args.manifest), Path(args.data_dir))
  return 0


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="tools/box_data.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  write = sub.add_parser("write", help="here: the datasets as parts and a manifest")
  write.add_argument("--archive-dir", required=True,
                     help="the original files, laid out as CNN_ARCHIVE_DIR")
  write.add_argument("--datasets", default="cifar10", help="comma-separated: cifar10,mnist")
  write.add_argument("--out", default=".box/data")
  write.add_argument("--part-mib", type=float, default=None,
                     help="default: the most one command can send beside the checkout")
  add = sub.add_parser("add", help="on the box: check one part and stage it")
  add.add_argument("--part", required=True)
  add.add_argument("--manifest", required=True)
  add.add_argument("--staging", required=True, help="outside the checkout, e.g. /tmp/cnnbox/parts")
  build = sub.add_parser("assemble", help="on the box: every part -> the checked dataset files")
  build.add_argument("--staging", required=True)
  build.add_argument("--manifest", required=True)
  build.add_argument("--data-dir", required=True, help="becomes a CNN_ARCHIVE_DIR")
  return p


COMMANDS = {"write": command_write, "add": command_add, "assemble": command_assemble}


def main(argv: list[str]) -> int:
  args = parser().parse_args(argv)
  try:
    return COMMANDS[args.command](args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
