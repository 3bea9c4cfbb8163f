"""The numpy archive reader (no TensorFlow) gives tfds's arrays, image for
image and label for label, and checks every file it reads."""
import gzip
import shutil
import tarfile

import numpy as np
import pytest

from cnn import datasets
from cnn.datasets import archives, splits
from cnn.errors import UserError


def _archive_source(name, archive_dir):
  return datasets.open_source(datasets.get_spec(name), None, archive_dir, "archives")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_every_split_equals_tfds_image_for_image(name, archive_dir, request):
  through_tfds = request.getfixturevalue(name)
  through_numpy = _archive_source(name, archive_dir)
  assert isinstance(through_numpy, datasets.ArchiveSource)
  for split in ("train", "test"):
    want_images, want_labels = through_tfds.load_split(split)
    images, labels = through_numpy.load_split(split)
    assert images.dtype == want_images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
  assert through_numpy.class_names() == through_tfds.class_names()


SPLITS = ["train[:45000]", "train[45000:]", "train[-600:]", "train[55000:56000]", "test[10%:20%]",
          "test[:33%]", "train[-1%:]", "test[2000:2007]", "test"]


def test_split_strings_select_what_tfds_selects(mnist, archive_dir):
  through_numpy = _archive_source("mnist", archive_dir)
  for split in SPLITS:
    want_images, want_labels = mnist.load_split(split)
    images, labels = through_numpy.load_split(split)
    np.testing.assert_array_equal(images, want_images, err_msg=split)
    np.testing.assert_array_equal(labels, want_labels, err_msg=split)


@pytest.mark.parametrize("split,match", [("validation", "no split 'validation'; valid: train, test"),
                                         ("train[:70000]", "outside the 60000 examples"),
                                         ("train[1:2:3]", "write NAME or NAME"),
                                         ("train+test", "write NAME or NAME")])
def test_bad_split_strings_name_the_fix(split, match):
  with pytest.raises(UserError, match=match):
    splits.select(split, {"train": 60000, "test": 10000})


def test_a_changed_byte_is_refused(tmp_path, archive_dir):
  copy = tmp_path / "mnist"
  shutil.copytree(f"{archive_dir}/mnist", copy)
  labels = copy / "t10k-labels-idx1-ubyte.gz"
  data = bytearray(gzip.decompress(labels.read_bytes()))
  data[100] = (data[100] + 1) % 10  # one test label changed, still a valid idx file
  labels.chmod(0o644)
  labels.write_bytes(gzip.compress(bytes(data)))
  with pytest.raises(UserError, match=r"corrupt archive .*t10k-labels-idx1-ubyte.gz: its sha256"):
    _archive_source("mnist", str(tmp_path)).load_split("test")


def test_a_cifar_batch_with_a_changed_byte_is_refused(tmp_path, archive_dir):
  root = tmp_path / "cifar10" / "cifar-10-batches-bin"
  shutil.copytree(f"{archive_dir}/cifar10/cifar-10-batches-bin", root)
  batch = root / "data_batch_3.bin"
  batch.chmod(0o644)
  with open(batch, "r+b") as f:
    f.seek(5000)
    f.write(b"\x00")
  with pytest.raises(UserError, match=r"corrupt archive .*data_batch_3.bin: its sha1"):
    _archive_source("cifar10", str(tmp_path)).load_split("train")


def test_a_tarball_that_is_not_the_official_one_is_refused(tmp_path, archive_dir):
  (tmp_path / "cifar10").mkdir()
  with tarfile.open(tmp_path / "cifar10" / "cifar-10-binary.tar.gz", "w:gz") as tar:
    tar.add(f"{archive_dir}/cifar10/cifar-10-batches-bin/batches.meta.txt",
            "cifar-10-batches-bin/batches.meta.txt")
  with pytest.raises(UserError, match=r"corrupt archive .*cifar-10-binary.tar.gz: its sha256"):
    _archive_source("cifar10", str(tmp_path)).load_split("test")


def test_missing_files_name_where_to_put_them(tmp_path):
  with pytest.raises(UserError, match=r"no original files for 'mnist' .* never downloads\): put "
                                       r"train-images-idx3-ubyte.gz.* in .*/mnist/"):
    _archive_source("mnist", str(tmp_path))
  with pytest.raises(UserError, match=r"set CNN_ARCHIVE_DIR"):
    _archive_source("cifar10", "")


def test_idx_parsing_rejects_other_files():
  with pytest.raises(UserError, match="not an idx file"):
    archives.parse_idx(b"\x00\x00\x09\x99" + bytes(20), "x.gz")


def test_tfds_order_is_md5_of_split_and_index():
  """tfds/core/hashing.py: md5(salt=split name, then str(key)), sorted."""
  order = archives.tfds_order("test", 5)
  import hashlib  # pylint: disable=import-outside-toplevel
  keys = [int(hashlib.md5(b"test" + str(i).encode()).hexdigest(), 16) for i in range(5)]
  assert order.tolist() == sorted(range(5), key=keys.__getitem__)


def test_tfds_stays_the_default_where_it_is_installed(archive_dir, tfds_dir, mnist):
  from cnn.datasets import tfds_source  # pylint: disable=import-outside-toplevel
  auto = datasets.open_source(datasets.get_spec("mnist"), tfds_dir, archive_dir)
  assert isinstance(auto, tfds_source.TfdsSource)
  assert datasets.tfds_installed()
