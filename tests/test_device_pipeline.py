"""The on-device training pipeline (config.data_on_device) against the
tf.data one: same order, same definitions of every augmentation, exact
resume; and a run trained from it."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec as P

from cnn import batching, datasets, device_pipeline, input_pipeline, train
from cnn.errors import UserError
from conftest import run_main

CIFAR = datasets.get_spec("cifar10")


def images_and_labels(n=100, size=8, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8),
          np.arange(n, dtype=np.int32) % 10)


def device_data(images, labels, **kwargs):
  mesh = train.make_mesh()
  args = dict(spec=CIFAR, batch_size=16, seed=3, augment="pad_crop_flip", crop_padding=2,
              cutout=0, replicated=NamedSharding(mesh, P()),
              batch_sharding=NamedSharding(mesh, P("data")))
  return device_pipeline.DeviceData(images, labels, **{**args, **kwargs})


def test_pad_crop_flip_matches_the_tf_definition():
  images, _ = images_and_labels(n=64)
  rng = np.random.default_rng(1)
  offsets = rng.integers(0, 5, (64, 2)).astype(np.int32)
  flips = rng.random(64) < 0.5
  expected = input_pipeline.pad_crop_flip(tf.constant(images), tf.constant(offsets),
                                          tf.constant(flips), 2).numpy()
  got = device_pipeline.pad_crop_flip(jnp.asarray(images), jnp.asarray(offsets),
                                      jnp.asarray(flips), 2)
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_cutout_mask_matches_the_tf_definition():
  centres = np.random.default_rng(2).integers(0, 32, (64, 2)).astype(np.int32)
  expected = input_pipeline.cutout_mask(tf.constant(centres), 32, 32, 8).numpy()
  np.testing.assert_array_equal(np.asarray(device_pipeline.cutout_mask(centres, 32, 32, 8)),
                                expected)


def test_without_augmentation_the_batches_are_the_tf_data_batches():
  images, labels = images_and_labels()
  on_device = list(device_data(images, labels, augment="none").batches(epoch=1))
  tf_data = list(input_pipeline.train_batches(
      images, labels, spec=CIFAR, shard=batching.Shard(16), seed=3, epoch=1,
      augment="none"))
  assert len(on_device) == len(tf_data) == 6
  for d, t in zip(on_device, tf_data):
    np.testing.assert_array_equal(np.asarray(d["label"]), t["label"])
    np.testing.assert_allclose(np.asarray(d["image"]), t["image"], rtol=1e-6, atol=1e-6)


def test_batches_are_a_function_of_seed_epoch_and_step():
  images, labels = images_and_labels()
  data = device_data(images, labels, cutout=4)
  full = [jax.device_get(b) for b in data.batches(epoch=1)]
  resumed = [jax.device_get(b) for b in data.batches(epoch=1, start_step=4)]
  for a, b in zip(full[4:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
  again = jax.device_get(next(device_data(images, labels, cutout=4).batches(epoch=1)))
  np.testing.assert_array_equal(full[0]["image"], again["image"])
  other = jax.device_get(next(data.batches(epoch=2)))
  assert not np.array_equal(full[0]["label"], other["label"])
  # Augmented: every image is its source image shifted, maybe mirrored, with a hole.
  plain = jax.device_get(next(device_data(images, labels, augment="none").batches(epoch=1)))
  assert not np.allclose(full[0]["image"], plain["image"])
  np.testing.assert_array_equal(full[0]["label"], plain["label"])
  holes = np.all(full[0]["image"] == 0, axis=-1).sum(axis=(1, 2))
  assert holes.max() == 16 and holes.min() >= 4  # the 4x4 square, maybe clipped


class FakeGpu:
  device_kind = "NVIDIA H100"

  def memory_stats(self):
    return {"bytes_limit": 80 * 2**30}


def test_a_split_too_large_for_the_device_is_refused_with_the_fix():
  cifar10_train = 50_000 * 32 * 32 * 3 + 50_000 * 4
  device_pipeline.check_fits(cifar10_train, [FakeGpu()])
  device_pipeline.check_fits(10**12, jax.devices("cpu"))  # no memory figure: not checked
  with pytest.raises(UserError, match="takes 25.00 GiB, more than 25% of NVIDIA H100's 80.0 GiB; "
                     "set --config.data_on_device=False"):
    device_pipeline.check_fits(25 * 2**30, [FakeGpu()])


@pytest.mark.slow
def test_a_run_with_data_on_device_learns(data_env, mnist, tmp_path):
  run_main(data_env, "--config=configs/tiny_mnist.py", f"--workdir={tmp_path}",
           "--config.data_on_device=True")
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["config"]["data_on_device"] is True
  assert results["test_accuracy"] > 0.6  # chance is 0.1
  assert 0 < results["train_time_s"] < results["wall_time_s"]
