"""The original dataset files read with numpy alone: no TensorFlow, no tfds.

For accelerator images that ship JAX without TensorFlow
(`config.data.source="archives"`, chosen automatically when tfds is not
installed). Reads the files `CNN_ARCHIVE_DIR` holds for tfds (MNIST-style idx
`.gz`, CIFAR binary batches extracted or as the official tarball), checks each
against its published checksum, and returns the splits in **tfds's order**:
tfds stores the examples of a split sorted by the md5 of (split name, example
key) (`tensorflow_datasets/core/hashing.py`; the key is the example's index in
the original file), so "train[:45000]" and the seeded batch order select the
same images here as through tfds (tested image for image).
"""
import dataclasses
import gzip
import hashlib
import tarfile
from pathlib import Path

import numpy as np

from cnn.errors import UserError

# sha256 of the official files, as tfds's url_checksums record them.
SHA256 = {
    ("mnist", "train-images-idx3-ubyte.gz"):
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ("mnist", "train-labels-idx1-ubyte.gz"):
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ("mnist", "t10k-images-idx3-ubyte.gz"):
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ("mnist", "t10k-labels-idx1-ubyte.gz"):
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ("fashion_mnist", "train-images-idx3-ubyte.gz"):
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ("fashion_mnist", "train-labels-idx1-ubyte.gz"):
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    ("fashion_mnist", "t10k-images-idx3-ubyte.gz"):
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ("fashion_mnist", "t10k-labels-idx1-ubyte.gz"):
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ("cifar10", "cifar-10-binary.tar.gz"):
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    ("cifar100", "cifar-100-binary.tar.gz"):
        "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
}
# sha1 of the official extracted CIFAR-10 batches (the tarball is checked
# whole; CIFAR-100's extracted files have no published checksums, so only
# their sizes are checked).
SHA1_EXTRACTED = {
    "cifar-10-batches-bin/data_batch_1.bin": "aadd24acce27caa71bf4b10992e9e7b2d74c2540",
    "cifar-10-batches-bin/data_batch_2.bin": "c0ba65cce70568cd57b4e03e9ac8d2a5367c1795",
    "cifar-10-batches-bin/data_batch_3.bin": "1dd00a74ab1d17a6e7d73e185b69dbf31242f295",
    "cifar-10-batches-bin/data_batch_4.bin": "aab85764eb3584312d3c7f65fd2fd016e36a258e",
    "cifar-10-batches-bin/data_batch_5.bin": "26e2849e66a845b7f1e4614ae70f4889ae604628",
    "cifar-10-batches-bin/test_batch.bin": "67eb016db431130d61cd03c7ad570b013799c88c",
}


def digest(path: Path, algorithm: str) -> str:
  h = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def check(path: Path, expected: str, algorithm: str) -> None:
  if digest(path, algorithm) != expected:
    raise UserError(f"corrupt archive {path}: its {algorithm} is not the official "
                    f"{expected[:12]}...; replace it with the original file")


def tfds_order(split_name: str, count: int) -> np.ndarray:
  """The file indices of a split in the order tfds stores it."""
  salted = hashlib.md5(split_name.encode())
  def key(index: int) -> int:
    h = salted.copy()
    h.update(str(index).encode())
    return int(h.hexdigest(), 16)
  return np.array(sorted(range(count), key=key), dtype=np.int64)


# --- MNIST-style idx files -------------------------------------------------

_IDX = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def parse_idx(data: bytes, what: str) -> np.ndarray:
  """An idx file's array (magic 2049: labels [n]; 2051: images [n, h, w, 1])."""
  magic = int.from_bytes(data[:4], "big")
  if magic == 2049:
    n = int.from_bytes(data[4:8], "big")
    return np.frombuffer(data, np.uint8, n, 8)
  if magic == 2051:
    n, h, w = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, n * h * w, 16).reshape(n, h, w, 1)
  raise UserError(f"{what} is not an idx file (magic {magic}); replace it with the original")


def read_idx(root: Path, dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  splits = {}
  for split, names in _IDX.items():
    arrays = []
    for name in names:
      check(root / name, SHA256[(dataset, name)], "sha256")
      arrays.append(parse_idx(gzip.decompress((root / name).read_bytes()), str(root / name)))
    splits[split] = tuple(arrays)
  return splits


# --- CIFAR binary batches --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CifarLayout:
  prefix: str  # the directory inside the tarball
  train: tuple[str, ...]
  test: tuple[str, ...]
  label_bytes: int  # the label used is the last one (CIFAR-100: fine, not coarse)
  names_file: str
  tarball: str


CIFAR = {
    "cifar10":
        CifarLayout("cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                    ("test_batch.bin",), 1, "batches.meta.txt", "cifar-10-binary.tar.gz"),
    "cifar100":
        CifarLayout("cifar-100-binary", ("train.bin",), ("test.bin",), 2, "fine_label_names.txt",
                    "cifar-100-binary.tar.gz"),
}


def parse_cifar(data: bytes, label_bytes: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  record = label_bytes + 3072
  if len(data) % record:
    raise UserError(f"{what} is not a CIFAR binary batch ({len(data)} bytes); replace it "
                    "with the original")
  rows = np.frombuffer(data, np.uint8).reshape(-1, record)
  images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), rows[:, label_bytes - 1].copy()


def _cifar_files(root: Path, dataset: str, wanted: tuple[str, ...]) -> dict[str, bytes]:
  """{file name: bytes} from the extracted directory or the tarball, checked."""
  layout = CIFAR[dataset]
  extracted = root / layout.prefix
  if all((extracted / f).is_file() for f in wanted):
    for name in wanted:
      expected = SHA1_EXTRACTED.get(f"{layout.prefix}/{name}")
      if expected:
        check(extracted / name, expected, "sha1")
    return {f: (extracted / f).read_bytes() for f in wanted}
  tarball = root / layout.tarball
  check(tarball, SHA256[(dataset, layout.tarball)], "sha256")
  with tarfile.open(tarball, "r:gz") as tar:
    return {f: tar.extractfile(f"{layout.prefix}/{f}").read() for f in wanted}


def read_cifar(root: Path, dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  layout = CIFAR[dataset]
  files = _cifar_files(root, dataset, (*layout.train, *layout.test))
  splits = {}
  for split, names in (("train", layout.train), ("test", layout.test)):
    parts = [parse_cifar(files[n], layout.label_bytes, n) for n in names]
    splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  return splits


def cifar_class_names(root: Path, dataset: str) -> list[str]:
  names_file = CIFAR[dataset].names_file
  return _cifar_files(root, dataset, (names_file,))[names_file].decode().split()


READERS = {"mnist": read_idx, "fashion_mnist": read_idx, "cifar10": read_cifar,
           "cifar100": read_cifar}


def read(root: Path, dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Every split of `dataset` in tfds's order: {name: (uint8 NHWC, int32 labels)},
  checksums verified."""
  splits = {}
  for name, (images, labels) in READERS[dataset](root, dataset).items():
    if len(images) != len(labels):
      raise UserError(f"{root}: the {name} images and labels differ in count; replace the "
                      "files with the originals")
    order = tfds_order(name, len(images))
    splits[name] = (images[order], labels[order].astype(np.int32))
  return splits
