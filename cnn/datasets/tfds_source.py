"""Datasets through tfds's own builders (`config.data.source="tfds"`),
prepared online or offline from the original archives.

tfds's download manager picks an original file up from its `manual_dir` under
the registered file name and validates its checksum, so prepared data is the
same as a download. With no archive directory, tfds downloads as usual.
This module imports TensorFlow; cnn/datasets/__init__.py imports it only when
this reader is chosen.
"""
import contextlib
import fcntl
import logging
import os
import re
import socket
import time
import urllib.parse
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError
from tensorflow_datasets.image_classification import cifar

from cnn.datasets import archives
from cnn.datasets.table import DatasetSpec, find_archives, where_to_put
from cnn.errors import UserError


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


def _check_extracted(manual_dir: Path) -> None:
  """tfds checks the tarball's checksum itself; extracted files are checked here."""
  for rel, expected in archives.SHA1_EXTRACTED.items():
    if (manual_dir / rel).is_file():
      archives.check(manual_dir / rel, expected, "sha1")


def _check_online(builder: tfds.core.DatasetBuilder, spec: DatasetSpec) -> None:
  """Fails at once when the download hosts do not resolve (tfds would retry
  for minutes before giving up)."""
  for url in builder.url_infos or {}:
    try:
      socket.getaddrinfo(urllib.parse.urlparse(url).hostname, 443)
    except OSError:
      raise UserError(f"dataset {spec.tfds_name!r} is not prepared and cannot be downloaded "
                      f"(no network): {where_to_put(spec, '')}") from None


def make_builder(spec: DatasetSpec, data_dir: str | None) -> tfds.core.DatasetBuilder:
  builder_cls = _ARCHIVE_BUILDERS.get(spec.tfds_name)
  if builder_cls is not None:
    return builder_cls(data_dir=data_dir)
  return tfds.builder(spec.tfds_name, data_dir=data_dir)


@contextlib.contextmanager
def _preparing_alone(spec: DatasetSpec, builder: tfds.core.DatasetBuilder):
  """Holds an exclusive lock while one process prepares `spec` in a local data
  dir, so runs started at once on one machine prepare it once (tfds alone
  lets the second fail renaming its copy onto the first's). The kernel drops
  the lock when its holder dies, even by kill -9. gs:// dirs are prepared by
  process 0 of a job (`cnn.datasets.open_data`) and are not locked here."""
  root = str(builder.data_dir_root)
  if "://" in root:
    yield
    return
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f".{spec.tfds_name}.prepare.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    yield


def prepare(spec: DatasetSpec, data_dir: str | None, archive_dir: str) -> tfds.core.DatasetBuilder:
  """Returns a prepared builder, preparing it from archives or online once."""
  builder = make_builder(spec, data_dir)
  if builder.is_prepared():
    return builder
  with _preparing_alone(spec, builder):
    builder = make_builder(spec, data_dir)  # another process may have prepared it meanwhile
    if builder.is_prepared():
      return builder
    return _prepare_now(spec, builder, archive_dir)


def _prepare_now(spec: DatasetSpec, builder: tfds.core.DatasetBuilder,
                 archive_dir: str) -> tfds.core.DatasetBuilder:
  if archive_dir:
    manual_dir = find_archives(spec, archive_dir)
    if manual_dir is None:
      raise UserError(f"no offline archives for {spec.tfds_name!r} in {archive_dir}: "
                      + where_to_put(spec, archive_dir))
    _check_extracted(manual_dir)
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir), try_download_gcs=False)
  else:
    _check_online(builder, spec)
    download_config = None
  # tfds's progress bars would stand before a one-line error on stderr; a line after says
  # what was prepared.
  tfds.display_progress_bar(False)
  start = time.perf_counter()
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
                    f"offline, {where_to_put(spec, archive_dir)}") from None
  logging.info("prepared %s in %s (%.0f s, once)", spec.tfds_name, builder.data_dir,
               time.perf_counter() - start)
  return builder


class TfdsSource:
  """A prepared tfds builder as a `cnn.datasets.Source`."""

  def __init__(self, builder: tfds.core.DatasetBuilder):
    self.builder = builder

  def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
      data = tfds.as_numpy(self.builder.as_dataset(split=split, batch_size=-1,
                                                   as_supervised=True))
    except (ValueError, AssertionError) as e:
      raise UserError(f"bad split {split!r} for {self.builder.name}: {e}") from None
    images, labels = data
    return images, labels.astype(np.int32)

  def class_names(self) -> list[str]:
    return list(self.builder.info.features["label"].names)
