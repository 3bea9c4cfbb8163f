"""Where images come from: a table of supported datasets and their preparation
through tfds's own builders, online or from a directory of original archives.

Offline, point `CNN_ARCHIVE_DIR` (or `config.archive_dir`) at a directory that
holds the original files, one sub-directory per dataset:

    $CNN_ARCHIVE_DIR/mnist/train-images-idx3-ubyte.gz  (+ the 3 other .gz)
    $CNN_ARCHIVE_DIR/cifar10/cifar-10-binary.tar.gz     (or the extracted
                                                          cifar-10-batches-bin/)

tfds's download manager picks an original file up from its `manual_dir` under
the registered file name and validates its checksum, so prepared data is the
same as a download. With no archive directory, tfds downloads as usual.
"""
import dataclasses
import hashlib
import os
import re
import socket
import urllib.parse
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
from tensorflow_datasets.image_classification import cifar

from cnn.errors import UserError, unknown_name

ARCHIVE_DIR_ENV = "CNN_ARCHIVE_DIR"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know about one tfds image dataset."""
  tfds_name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  mean: tuple[float, ...]  # per channel, on [0, 1] pixels, of the train split
  std: tuple[float, ...]
  archives: tuple[tuple[str, ...], ...]  # alternative sets of original files


_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_CIFAR10_BINS = tuple(f"cifar-10-batches-bin/{f}" for f in (
    "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
    "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin", "batches.meta.txt"))
_CIFAR100_BINS = tuple(f"cifar-100-binary/{f}" for f in (
    "train.bin", "test.bin", "coarse_label_names.txt", "fine_label_names.txt"))

DATASETS = {
    "mnist": DatasetSpec("mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), (_MNIST_FILES,)),
    "fashion_mnist": DatasetSpec("fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,), (_MNIST_FILES,)),
    "cifar10": DatasetSpec("cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465),
                           (0.2470, 0.2435, 0.2616), (("cifar-10-binary.tar.gz",), _CIFAR10_BINS)),
    "cifar100": DatasetSpec("cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762), (("cifar-100-binary.tar.gz",), _CIFAR100_BINS)),
}

# SHA1 of the official extracted CIFAR-10 binary batches: tfds checks the
# tarball's checksum itself, extracted files are checked here.
_EXTRACTED_SHA1 = {
    "cifar-10-batches-bin/data_batch_1.bin": "aadd24acce27caa71bf4b10992e9e7b2d74c2540",
    "cifar-10-batches-bin/data_batch_2.bin": "c0ba65cce70568cd57b4e03e9ac8d2a5367c1795",
    "cifar-10-batches-bin/data_batch_3.bin": "1dd00a74ab1d17a6e7d73e185b69dbf31242f295",
    "cifar-10-batches-bin/data_batch_4.bin": "aab85764eb3584312d3c7f65fd2fd016e36a258e",
    "cifar-10-batches-bin/data_batch_5.bin": "26e2849e66a845b7f1e4614ae70f4889ae604628",
    "cifar-10-batches-bin/test_batch.bin": "67eb016db431130d61cd03c7ad570b013799c88c",
}


class _ExtractedCifarMixin:
  """Reads already-extracted CIFAR binary batches from the manual dir.

  tfds's CIFAR builders only know the tarball; when the user holds the
  extracted `cifar-10-batches-bin/` instead, this reads it with the parent
  builder's own example generator, so the prepared dataset is identical.
  """

  def _split_generators(self, dl_manager):
    manual = dl_manager._manual_dir  # pylint: disable=protected-access
    info = self._cifar_info
    root = Path(manual) / info.prefix if manual else None
    if root is None or not root.is_dir():
      return super()._split_generators(dl_manager)
    for key, label_file in zip(info.label_keys, info.label_files):
      names = (root / label_file).read_text().split()
      self.info.features[key].names = names
    return {
        tfds.Split.TRAIN: self._generate_examples(
            "train_", [str(root / f) for f in info.train_files]),
        tfds.Split.TEST: self._generate_examples(
            "test_", [str(root / f) for f in info.test_files]),
    }


class Cifar10Archive(_ExtractedCifarMixin, cifar.Cifar10, skip_registration=True):
  name = "cifar10"  # same name and version: plain `tfds.load("cifar10")` reads it
  _checksums_path = cifar.Cifar10._checksums_path  # tfds's, to validate the tarball


class Cifar100Archive(_ExtractedCifarMixin, cifar.Cifar100, skip_registration=True):
  name = "cifar100"
  _checksums_path = cifar.Cifar100._checksums_path


_ARCHIVE_BUILDERS = {"cifar10": Cifar10Archive, "cifar100": Cifar100Archive}


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise unknown_name("dataset", name, DATASETS)
  return DATASETS[name]


def resolve_archive_dir(config_value: str) -> str:
  """`config.archive_dir` if set, else `$CNN_ARCHIVE_DIR`, else ''."""
  return config_value or os.environ.get(ARCHIVE_DIR_ENV, "")


def _where_to_put(spec: DatasetSpec, archive_dir: str) -> str:
  options = " OR ".join(", ".join(files) for files in spec.archives)
  target = (f"{archive_dir}/{spec.tfds_name}/" if archive_dir
            else f"${ARCHIVE_DIR_ENV}/{spec.tfds_name}/ (and set {ARCHIVE_DIR_ENV})")
  return f"put {options} in {target}"


def find_archives(spec: DatasetSpec, archive_dir: str) -> Path | None:
  """The directory holding a complete set of original files, or None."""
  for candidate in (Path(archive_dir) / spec.tfds_name, Path(archive_dir)):
    for files in spec.archives:
      if all((candidate / f).is_file() for f in files):
        return candidate
  return None


def _sha1(path: Path) -> str:
  digest = hashlib.sha1()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _check_extracted(manual_dir: Path) -> None:
  for rel, expected in _EXTRACTED_SHA1.items():
    path = manual_dir / rel
    if path.is_file() and _sha1(path) != expected:
      raise UserError(f"corrupt archive {path}: sha1 {_sha1(path)} != official "
                      f"{expected}; replace it with the original file")


def _check_online(builder: tfds.core.DatasetBuilder, spec: DatasetSpec) -> None:
  """Fails at once when the download hosts do not resolve (tfds would retry
  for minutes before giving up)."""
  for url in builder.url_infos or {}:
    try:
      socket.getaddrinfo(urllib.parse.urlparse(url).hostname, 443)
    except OSError:
      raise UserError(f"dataset {spec.tfds_name!r} is not prepared and cannot be downloaded "
                      f"(no network): {_where_to_put(spec, '')}") from None


def make_builder(spec: DatasetSpec, data_dir: str | None) -> tfds.core.DatasetBuilder:
  builder_cls = _ARCHIVE_BUILDERS.get(spec.tfds_name)
  if builder_cls is not None:
    return builder_cls(data_dir=data_dir)
  return tfds.builder(spec.tfds_name, data_dir=data_dir)


def prepare(spec: DatasetSpec, data_dir: str | None, archive_dir: str) -> tfds.core.DatasetBuilder:
  """Returns a prepared builder, preparing it from archives or online once."""
  builder = make_builder(spec, data_dir)
  if builder.is_prepared():
    return builder
  if archive_dir:
    manual_dir = find_archives(spec, archive_dir)
    if manual_dir is None:
      raise UserError(f"no offline archives for {spec.tfds_name!r} in {archive_dir}: "
                      + _where_to_put(spec, archive_dir))
    _check_extracted(manual_dir)
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir), try_download_gcs=False)
  else:
    _check_online(builder, spec)
    download_config = None
  try:
    builder.download_and_prepare(download_config=download_config)
  except NonMatchingChecksumError as e:
    found = re.search(r"downloaded to (\S+?),", str(e))
    path = found.group(1) if found else "one of the files"
    raise UserError(f"corrupt archive for {spec.tfds_name!r}: {path} does not match the official "
                    "checksum; replace it with the original file") from None
  except Exception as e:  # offline download failures come in many types
    if archive_dir:
      raise
    raise UserError(f"could not download {spec.tfds_name!r} ({type(e).__name__}); "
                    f"offline, {_where_to_put(spec, archive_dir)}") from None
  return builder


def load_split(builder: tfds.core.DatasetBuilder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split as (uint8 images NHWC, int32 labels); CIFAR-10 is 180 MB."""
  try:
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
  except (ValueError, AssertionError) as e:
    raise UserError(f"bad split {split!r} for {builder.name}: {e}") from None
  images, labels = data
  return images, labels.astype(np.int32)


def class_names(builder: tfds.core.DatasetBuilder) -> list[str]:
  return list(builder.info.features["label"].names)
