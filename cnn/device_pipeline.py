"""Training batches gathered on the accelerator from a split kept in its memory.

For small datasets (CIFAR-10 is 150 MB of uint8 pixels) the whole training
split is copied to every device once; each step then sends only the batch's
example indices, and a jitted gather picks the uint8 batch where the model
runs. This is what the fastest CIFAR-10 recipes do: no host pipeline, no
host-to-device image copies, no input stalls. (`config.data.on_device`; the
tf.data feed in input_pipeline.py is the default and the one for datasets
that do not fit.)

Same contract as input_pipeline.train_batches: the same seeded order of
(seed, epoch), uint8 images and int32 labels; augmentation happens in the
train step for both feeds (cnn/augment/). Needs no TensorFlow.
"""
import copy
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from cnn.batching import epoch_order
from cnn.errors import UserError

MAX_MEMORY_FRACTION = 0.25  # of one device's memory, left for the model and activations


def check_fits(num_bytes: int, devices: list) -> None:
  """Refuses a split that would take more than a quarter of a device's memory
  (devices that do not report their memory, like the CPU, are not checked)."""
  for device in devices:
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if limit and num_bytes > MAX_MEMORY_FRACTION * limit:
      raise UserError(
          f"config.data.on_device: the training split takes {num_bytes / 2**30:.2f} GiB, more "
          f"than {MAX_MEMORY_FRACTION:.0%} of {device.device_kind}'s {limit / 2**30:.1f} GiB; "
          "set --config.data.on_device=False to feed it from the host with tf.data")


def gather(images: jnp.ndarray, labels: jnp.ndarray, order: jnp.ndarray, step: jnp.ndarray
           ) -> dict[str, jnp.ndarray]:
  """Global batch number `step` of the epoch whose example order is `order`
  [steps, batch]."""
  indices = order[step]
  return {"image": images[indices], "label": labels[indices]}


class DeviceData:
  """A training split held on the devices (replicated) and its batches."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
               replicated: NamedSharding, batch_sharding: NamedSharding):
    self.num_examples, self.batch_size, self.seed = len(images), batch_size, seed
    self.replicated = replicated
    check_fits(images.nbytes + labels.nbytes, list(replicated.mesh.local_devices))
    self.images, self.labels = self.put(images), self.put(labels.astype(np.int32))
    self._gather = jax.jit(gather, in_shardings=(replicated,) * 4,
                           out_shardings=batch_sharding)

  def reseeded(self, seed: int) -> "DeviceData":
    """The same split on the same devices (not copied again), in `seed`'s order."""
    other = copy.copy(self)
    other.seed = seed
    return other

  def put(self, array: np.ndarray) -> jax.Array:
    """A copy on every device; every process holds the same `array`."""
    return jax.make_array_from_callback(array.shape, self.replicated,
                                        lambda i: np.asarray(array[i]))

  def batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    """The global batches of one epoch from `start_step` on, already sharded
    over the devices (dispatched asynchronously, like the train step)."""
    order = epoch_order(self.seed, epoch, self.num_examples, self.batch_size)
    on_device = self.put(order.astype(np.int32))
    for step in range(start_step, len(order)):
      yield self._gather(self.images, self.labels, on_device, self.put(np.int32(step)))
