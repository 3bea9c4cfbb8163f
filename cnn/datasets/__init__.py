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
is a row of DATASETS, plus a reader in archives.READERS.
"""
import dataclasses
import functools
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from cnn.datasets import archives, splits
from cnn.errors import UserError, unknown_name
from cnn.settings import Section, Setting, at_least

ARCHIVE_DIR_ENV = "CNN_ARCHIVE_DIR"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know about one image dataset."""
  tfds_name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  mean: tuple[float, ...]  # per channel, on [0, 1] pixels, of the train split
  std: tuple[float, ...]
  archives: tuple[tuple[str, ...], ...]  # alternative sets of original files
  class_names: tuple[str, ...] = ()  # () = read from the dataset's own files


_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_CIFAR10_BINS = tuple(f"cifar-10-batches-bin/{f}" for f in (
    "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
    "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin", "batches.meta.txt"))
_CIFAR100_BINS = tuple(f"cifar-100-binary/{f}" for f in (
    "train.bin", "test.bin", "coarse_label_names.txt", "fine_label_names.txt"))
_DIGITS = tuple(str(i) for i in range(10))
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
            "Sneaker", "Bag", "Ankle boot")  # tfds's names

DATASETS = {
    "mnist":
        DatasetSpec("mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), (_MNIST_FILES,), _DIGITS),
    "fashion_mnist":
        DatasetSpec("fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,), (_MNIST_FILES,),
                    _FASHION),
    "cifar10":
        DatasetSpec("cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    (("cifar-10-binary.tar.gz",), _CIFAR10_BINS)),
    "cifar100":
        DatasetSpec("cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409),
                    (0.2673, 0.2564, 0.2762), (("cifar-100-binary.tar.gz",), _CIFAR100_BINS)),
}


class Source(Protocol):
  """A dataset ready to read."""

  def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as (uint8 images NHWC, int32 labels); CIFAR-10 is 180 MB."""

  def class_names(self) -> list[str]:
    """The label names, in label order."""


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise unknown_name("dataset", name, DATASETS)
  return DATASETS[name]


def resolve_archive_dir(config_value: str) -> str:
  """`config.data.archive_dir` if set, else `$CNN_ARCHIVE_DIR`, else ''."""
  return config_value or os.environ.get(ARCHIVE_DIR_ENV, "")


def where_to_put(spec: DatasetSpec, archive_dir: str) -> str:
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


def open_from_config(config) -> Source:
  """The dataset a config names, through the reader `config.data.source` names."""
  data = config.data
  return open_source(get_spec(data.name), data.tfds_dir or None,
                     resolve_archive_dir(data.archive_dir), data.source)


def open_data(config) -> Source:
  """The config's dataset, prepared (tfds) by process 0 while the others wait:
  processes sharing one TFDS_DATA_DIR never write it at the same time, and
  hosts with their own directories each prepare theirs afterwards."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    source = open_from_config(config)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("dataset prepared by process 0")
  if jax.process_index() != 0:
    source = open_from_config(config)
  return source
