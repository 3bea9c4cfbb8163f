"""Where images come from: the table of supported datasets and the readers
that turn a split string into arrays.

Two readers (`config.data.source`), the same arrays (tested image for image):
  * "tfds": tfds's own builders, prepared once online or from the original
    archives (tfds_source.py). The default where TensorFlow is installed.
  * "archives": the original files read with numpy, no TensorFlow
    (archives.py). For accelerator images without TensorFlow.
  * "auto" (default): "tfds" if tensorflow_datasets imports, else "archives".

Offline, point `CNN_ARCHIVE_DIR` (or `config.data.archive_dir`) at a directory that
holds the original files, one sub-directory per dataset:

    $CNN_ARCHIVE_DIR/mnist/train-images-idx3-ubyte.gz  (+ the 3 other .gz)
    $CNN_ARCHIVE_DIR/cifar10/cifar-10-binary.tar.gz     (or the extracted
                                                          cifar-10-batches-bin/)

Both readers check each file against its published checksum. A new dataset
is a row of DATASETS (table.py), plus a reader in archives.READERS.
"""
import functools
from typing import Protocol

import numpy as np

from cnn.datasets import archives, splits
from cnn.datasets.table import (  # noqa: F401 (the package's names for them)
    ARCHIVE_DIR_ENV, DATASETS, DatasetSpec, find_archives, get_spec, resolve_archive_dir,
    where_to_put)
from cnn.errors import UserError, unknown_name
from cnn.schema import Section, Setting, at_least

class Source(Protocol):
  """A dataset ready to read."""

  def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as (uint8 images NHWC, int32 labels); CIFAR-10 is 180 MB."""

  def class_names(self) -> list[str]:
    """The label names, in label order."""


class ArchiveSource:
  """The original files read with numpy (archives.py); nothing is prepared."""

  def __init__(self, spec: DatasetSpec, archive_dir: str):
    root = find_archives(spec, archive_dir) if archive_dir else None
    if root is None:
      raise UserError(f"no original files for {spec.tfds_name!r} (data_source 'archives' reads "
                      f"them, it never downloads): {where_to_put(spec, archive_dir)}")
    self.spec, self.root = spec, root

  @functools.cached_property
  def _splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return archives.read(self.root, self.spec.tfds_name)

  def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    name, selected = splits.select(split, {k: len(v[1]) for k, v in self._splits.items()})
    images, labels = self._splits[name]
    return images[selected], labels[selected]

  def class_names(self) -> list[str]:
    return list(self.spec.class_names) or archives.cifar_class_names(self.root,
                                                                    self.spec.tfds_name)


def tfds_installed() -> bool:
  try:
    import tensorflow_datasets  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def _open_tfds(spec: DatasetSpec, data_dir: str | None, archive_dir: str) -> Source:
  from cnn.datasets import tfds_source  # pylint: disable=import-outside-toplevel
  return tfds_source.TfdsSource(tfds_source.prepare(spec, data_dir, archive_dir))


def _open_archives(spec: DatasetSpec, data_dir: str | None, archive_dir: str) -> Source:
  del data_dir  # tfds's cache; the archives are read as they are
  return ArchiveSource(spec, archive_dir)


SOURCES = {"tfds": _open_tfds, "archives": _open_archives}
DATA_SOURCES = ("auto", *SOURCES)

CONFIG = Section("data", "where the images come from and how they reach the devices", {
    "name": Setting("cifar10", "a dataset of DATASETS", choices=DATASETS),
    "train_split": Setting("train[:45000]", "tfds split string", bool,
                           "a tfds split, e.g. train[:45000]"),
    "validation_split": Setting("train[45000:]", "held out of train for model selection; "
                                "'' = none"),
    "test_split": Setting("test", "tfds split string", bool, "a tfds split, e.g. test"),
    "source": Setting("auto", "the reader: 'tfds', 'archives' (numpy, no TensorFlow) or "
                      "'auto' (tfds if installed); the arrays are the same", choices=DATA_SOURCES,
                      example="archives"),
    "archive_dir": Setting("", "the original archives for offline use; '' = "
                           f"${ARCHIVE_DIR_ENV}"),
    "tfds_dir": Setting("", "where tfds keeps prepared data; '' = $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets"),
    "prefetch_batches": Setting(2, "batches copied to the devices ahead of the step",
                                at_least(0), ">= 0"),
    "on_device": Setting(False, "keep the training split in accelerator memory and augment "
                         "there (cnn/device_pipeline.py; small datasets)", example=True),
}, renamed={"dataset": "name", "train_split": "train_split",
            "validation_split": "validation_split", "test_split": "test_split",
            "data_source": "source", "archive_dir": "archive_dir", "data_dir": "tfds_dir",
            "prefetch_batches": "prefetch_batches", "data_on_device": "on_device"})


def open_source(spec: DatasetSpec, data_dir: str | None, archive_dir: str,
                source: str = "auto") -> Source:
  """The dataset through the reader `source` names ("auto": tfds if installed),
  prepared if that reader needs it."""
  if source == "auto":
    source = "tfds" if tfds_installed() else "archives"
  if source not in SOURCES:
    raise unknown_name("data source", source, DATA_SOURCES)
  if source == "tfds" and not tfds_installed():
    raise UserError("config.data.source='tfds' needs tensorflow-datasets; install it "
                    "(requirements.txt) or set --config.data.source=archives")
  return SOURCES[source](spec, data_dir, archive_dir)


def open_dataset(data) -> Source:
  """The dataset `data` (a config's `data` section) names, through the reader
  its `source` names."""
  return open_source(get_spec(data.name), data.tfds_dir or None,
                     resolve_archive_dir(data.archive_dir), data.source)


def open_data(data) -> Source:
  """`open_dataset(data)` (`data`: a config's `data` section), prepared
  (tfds) by process 0 while the others wait: processes sharing one
  TFDS_DATA_DIR never write it at the same time, and hosts with their own
  directories each prepare theirs afterwards."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    source = open_dataset(data)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("dataset prepared by process 0")
  if jax.process_index() != 0:
    source = open_dataset(data)
  return source
