"""Training batches made on the accelerator from a split kept in its memory.

For small datasets (CIFAR-10 is 150 MB of uint8 pixels) the whole training
split is copied to every device once; each step then sends only the batch's
example indices, and one jitted function gathers, augments and normalises the
batch where the model runs. This is what the fastest CIFAR-10 recipes do: no
host pipeline, no host-to-device image copies, no input stalls.
(`config.data_on_device`; the tf.data pipeline in input_pipeline.py is the
default and the one for datasets that do not fit.)

Same contract as input_pipeline.train_batches: the example order is the same
seeded permutation of (seed, epoch), augmentation draws are a pure function
of (seed, epoch, step) and are made for the whole global batch, so a resumed
run and any number of devices or hosts see the same batches. The draws come
from jax.random instead of TF's stateless ops, so the two pipelines agree on
the order and the definitions (tested) but not on the random crops.
"""
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding

from cnn.datasets import DatasetSpec
from cnn.errors import UserError
from cnn.batching import epoch_permutation, steps_per_epoch

MAX_MEMORY_FRACTION = 0.25  # of one device's memory, left for the model and activations


def check_fits(num_bytes: int, devices: list) -> None:
  """Refuses a split that would take more than a quarter of a device's memory
  (devices that do not report their memory, like the CPU, are not checked)."""
  for device in devices:
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if limit and num_bytes > MAX_MEMORY_FRACTION * limit:
      raise UserError(
          f"config.data_on_device: the training split takes {num_bytes / 2**30:.2f} GiB, more "
          f"than {MAX_MEMORY_FRACTION:.0%} of {device.device_kind}'s {limit / 2**30:.1f} GiB; "
          "set --config.data_on_device=False to feed it from the host with tf.data")


def normalize(images: jnp.ndarray, spec: DatasetSpec) -> jnp.ndarray:
  """uint8 pixels -> float32 with zero mean, unit variance per channel."""
  images = images.astype(jnp.float32) / 255.0
  return (images - jnp.asarray(spec.mean, jnp.float32)) / jnp.asarray(spec.std, jnp.float32)


def pad_crop_flip(images: jnp.ndarray, offsets: jnp.ndarray, flips: jnp.ndarray,
                  padding: int) -> jnp.ndarray:
  """Zero-pad each side by `padding`, crop the original size at `offsets`
  [n, 2], mirror where `flips` [n] (input_pipeline.pad_crop_flip's definition)."""
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  crop = jax.vmap(lambda image, at: lax.dynamic_slice(image, (at[0], at[1], 0),
                                                      (height, width, channels)))
  images = crop(padded, offsets)
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def cutout_mask(centres: jnp.ndarray, height: int, width: int, size: int) -> jnp.ndarray:
  """[n, height, width, 1] float mask, 0 on the `size` x `size` square around
  each of `centres` [n, 2] (input_pipeline.cutout_mask's definition)."""
  low = centres - size // 2
  rows, cols = jnp.arange(height)[None, :], jnp.arange(width)[None, :]
  in_rows = (rows >= low[:, :1]) & (rows < low[:, :1] + size)
  in_cols = (cols >= low[:, 1:]) & (cols < low[:, 1:] + size)
  hole = in_rows[:, :, None] & in_cols[:, None, :]
  return (~hole).astype(jnp.float32)[..., None]


def step_key(seed: int, epoch: jnp.ndarray, step: jnp.ndarray) -> jax.Array:
  """The key of every random draw of one training step."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), step)


def make_batch(images: jnp.ndarray, labels: jnp.ndarray, order: jnp.ndarray, epoch: jnp.ndarray,
               step: jnp.ndarray, *, seed: int, spec: DatasetSpec, augment: str,
               crop_padding: int, cutout: int) -> dict[str, jnp.ndarray]:
  """Global batch number `step` of the epoch whose example order is `order`
  [steps, batch], augmented with draws keyed by (seed, epoch, step)."""
  indices = order[step]
  batch = images[indices]
  n, height, width, _ = batch.shape
  crop_key, flip_key, cutout_key = jax.random.split(step_key(seed, epoch, step), 3)
  if augment != "none":
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * crop_padding + 1)
    flips = jax.random.uniform(flip_key, (n,)) < (0.5 if augment == "pad_crop_flip" else 0.0)
    batch = pad_crop_flip(batch, offsets, flips, crop_padding)
  batch = normalize(batch, spec)
  if cutout:  # after normalisation, so the hole is the dataset mean
    centres = jax.random.randint(cutout_key, (n, 2), 0, max(height, width))
    centres = jnp.minimum(centres, jnp.asarray([height - 1, width - 1]))
    batch = batch * cutout_mask(centres, height, width, cutout)
  return {"image": batch, "label": labels[indices]}


class DeviceData:
  """A training split held on the devices (replicated) and its batches."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *, spec: DatasetSpec,
               batch_size: int, seed: int, augment: str, crop_padding: int, cutout: int,
               replicated: NamedSharding, batch_sharding: NamedSharding):
    self.num_examples, self.batch_size, self.seed = len(images), batch_size, seed
    self.replicated = replicated
    check_fits(images.nbytes + labels.nbytes, list(replicated.mesh.local_devices))
    self.images, self.labels = self.put(images), self.put(labels.astype(np.int32))
    self._batch = jax.jit(
        functools.partial(make_batch, seed=seed, spec=spec, augment=augment,
                          crop_padding=crop_padding, cutout=cutout),
        in_shardings=(replicated,) * 5, out_shardings=batch_sharding)

  def put(self, array: np.ndarray) -> jax.Array:
    """A copy on every device; every process holds the same `array`."""
    return jax.make_array_from_callback(array.shape, self.replicated, lambda i: np.asarray(array[i]))

  def batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    """The global batches of one epoch from `start_step` on, already sharded
    over the devices (dispatched asynchronously, like the train step)."""
    steps = steps_per_epoch(self.num_examples, self.batch_size)
    order = epoch_permutation(self.seed, epoch, self.num_examples)[: steps * self.batch_size]
    order = self.put(order.reshape(steps, self.batch_size).astype(np.int32))
    epoch_on_device = self.put(np.int32(epoch))  # once per epoch, not per step
    for step in range(start_step, steps):
      yield self._batch(self.images, self.labels, order, epoch_on_device,
                        self.put(np.int32(step)))
