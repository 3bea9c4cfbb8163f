"""The supported datasets (`DATASETS`: name -> `DatasetSpec`) and where
their original files are looked for: what every reader and the rest of the
code know of a dataset. A new dataset is a row here, plus a reader in
archives.READERS."""
import dataclasses
import os
from pathlib import Path

from cnn.errors import unknown_name

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
