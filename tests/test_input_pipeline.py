"""Real data through tfds, the tf.data feed's order and sharding, and exact
evaluation counts."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from cnn import batching, datasets, input_pipeline
from cnn.batching import Shard
from cnn.datasets import tfds_source
from cnn.errors import UserError

MNIST = datasets.get_spec("mnist")


def test_eval_counts_every_mnist_test_image_exactly_once(mnist):
  images, labels = mnist.load_split("test")
  assert len(images) == 10_000
  batches = list(batching.eval_batches(images, labels, shard=Shard(3000)))
  assert len(batches) == 4  # 3 full batches and one padded with 2000 masked zeros
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 10_000 and mask[:10_000].all()
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:10_000], labels)
  # uint8 pixels as stored (normalised on the device), padding with zero images
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[:10_000], images)
  assert batches[-1]["image"].dtype == np.uint8 and not batches[-1]["image"][1000:].any()


def test_cifar10_from_extracted_batches_has_seed_splits(cifar10):
  assert cifar10.class_names()[:3] == ["airplane", "automobile", "bird"]
  train, _ = cifar10.load_split("train[:45000]")
  val, _ = cifar10.load_split("train[45000:]")
  test, test_labels = cifar10.load_split("test")
  assert (len(train), len(val), len(test)) == (45_000, 5_000, 10_000)
  assert np.bincount(test_labels).tolist() == [1000] * 10
  # Official per-channel test mean (shared/datasets/README.md).
  np.testing.assert_allclose((test / 255.0).mean(axis=(0, 1, 2)),
                             [0.49421, 0.48513, 0.45041], atol=1e-4)


def test_two_processes_preparing_one_dir_at_once_both_get_it(tmp_path, archive_dir):
  """Two runs started together on one machine with an empty TFDS_DATA_DIR:
  without a lock tfds lets the second fail renaming its copy onto the first's."""
  code = ("import sys; from cnn import datasets; from cnn.datasets import tfds_source; "
          "b = tfds_source.prepare(datasets.get_spec('mnist'), sys.argv[1], sys.argv[2]); "
          "print(b.data_dir)")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), archive_dir],
                            cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  assert [out.splitlines()[-1] for out, _ in outs] == [f"{tmp_path}/mnist/3.0.1"] * 2
  assert [d.name for d in (tmp_path / "mnist").iterdir()] == ["3.0.1"]  # no incomplete copy
  images, _ = tfds_source.TfdsSource(tfds_source.make_builder(MNIST, str(tmp_path))).load_split(
      "test")
  assert len(images) == 10_000


def test_missing_archives_name_the_files(tmp_path):
  with pytest.raises(UserError, match="train-images-idx3-ubyte.gz.*mnist/"):
    tfds_source.prepare(MNIST, str(tmp_path / "tfds"), str(tmp_path))


def test_corrupt_extracted_cifar_batch_is_refused(tmp_path, archive_dir):
  root = tmp_path / "cifar10" / "cifar-10-batches-bin"
  root.mkdir(parents=True)
  for f in datasets.DATASETS["cifar10"].archives[1]:
    (root.parent / f).write_bytes(b"not the original")
  with pytest.raises(UserError, match="corrupt archive .*data_batch_1.bin"):
    tfds_source.prepare(datasets.get_spec("cifar10"), str(tmp_path / "tfds"), str(tmp_path))


def _batches(images, labels, **kwargs):
  args = dict(seed=3, epoch=1)
  return list(input_pipeline.train_batches(images, labels, **{**args, **kwargs}))


def test_train_batches_are_a_function_of_seed_epoch_and_step():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (100, 8, 8, 1), dtype=np.uint8)
  labels = np.arange(100, dtype=np.int32)
  full = _batches(images, labels, shard=Shard(16))
  assert len(full) == 6  # 100 // 16, remainder dropped
  order = batching.epoch_order(3, 1, 100, 16)
  for step, batch in enumerate(full):  # uint8 rows of the seeded order, nothing else
    assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
    np.testing.assert_array_equal(batch["image"], images[order[step]])
    np.testing.assert_array_equal(batch["label"], labels[order[step]])
  again = _batches(images, labels, shard=Shard(16))
  resumed = _batches(images, labels, shard=Shard(16), start_step=4)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  other_epoch = _batches(images, labels, shard=Shard(16), epoch=2)
  assert not np.array_equal(full[0]["label"], other_epoch[0]["label"])
  # Two processes' slices put together are the one-process global batch.
  halves = [_batches(images, labels, shard=Shard(16, p, 2)) for p in range(2)]
  for step, batch in enumerate(full):
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key])


def test_batch_size_must_divide_over_devices():
  with pytest.raises(UserError, match="multiple of the 8 devices; e.g. --config.batch_size=96"):
    batching.check_batch_size(100, 8)
