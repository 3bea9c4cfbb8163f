"""The on-device feed (config.data.on_device) against the tf.data one: the
same uint8 batches in the same order, exact resume; and a run trained from it."""
import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cnn import batching, device_pipeline, input_pipeline, train
from cnn.errors import UserError
from conftest import run_main


def images_and_labels(n=100, size=8, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8),
          np.arange(n, dtype=np.int32) % 10)


def device_data(images, labels, **kwargs):
  mesh = train.make_mesh()
  args = dict(batch_size=16, seed=3, replicated=NamedSharding(mesh, P()),
              batch_sharding=NamedSharding(mesh, P("data")))
  return device_pipeline.DeviceData(images, labels, **{**args, **kwargs})


def test_the_two_feeds_deliver_the_same_uint8_batches():
  """One definition of the batch: the device feed's gather and tf.data's give
  the same bytes, in the same order; augmentation happens after, in the step."""
  images, labels = images_and_labels()
  on_device = [jax.device_get(b) for b in device_data(images, labels).batches(epoch=1)]
  tf_data = list(input_pipeline.train_batches(images, labels, shard=batching.Shard(16), seed=3,
                                              epoch=1))
  assert len(on_device) == len(tf_data) == 6
  for d, t in zip(on_device, tf_data):
    assert d["image"].dtype == t["image"].dtype == np.uint8
    np.testing.assert_array_equal(d["image"], t["image"])
    np.testing.assert_array_equal(d["label"], t["label"])


def test_batches_are_a_function_of_seed_epoch_and_step():
  images, labels = images_and_labels()
  data = device_data(images, labels)
  full = [jax.device_get(b) for b in data.batches(epoch=1)]
  resumed = [jax.device_get(b) for b in data.batches(epoch=1, start_step=4)]
  for a, b in zip(full[4:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
  other = jax.device_get(next(data.batches(epoch=2)))
  assert not np.array_equal(full[0]["label"], other["label"])
  other_seed = jax.device_get(next(device_data(images, labels, seed=4).batches(epoch=1)))
  assert not np.array_equal(full[0]["label"], other_seed["label"])


class FakeGpu:
  device_kind = "NVIDIA H100"

  def memory_stats(self):
    return {"bytes_limit": 80 * 2**30}


def test_a_split_too_large_for_the_device_is_refused_with_the_fix():
  cifar10_train = 50_000 * 32 * 32 * 3 + 50_000 * 4
  device_pipeline.check_fits(cifar10_train, [FakeGpu()])
  device_pipeline.check_fits(10**12, jax.devices("cpu"))  # no memory figure: not checked
  with pytest.raises(UserError, match="takes 25.00 GiB, more than 25% of NVIDIA H100's 80.0 GiB; "
                     "set --config.data.on_device=False"):
    device_pipeline.check_fits(25 * 2**30, [FakeGpu()])


@pytest.mark.slow
def test_a_run_with_data_on_device_learns(data_env, mnist, tmp_path):
  run_main(data_env, "--config=configs/tiny_mnist.py", f"--workdir={tmp_path}",
           "--config.data.on_device=True")
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["config"]["data"]["on_device"] is True
  assert results["test_accuracy"] > 0.6  # chance is 0.1
  assert 0 < results["train_time_s"] < results["wall_time_s"]
