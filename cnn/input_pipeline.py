"""Training batches built on the host with tf.data from an in-memory split
(the default feed; `config.data_on_device=True` makes them on the accelerator
instead, device_pipeline.py, and needs no TensorFlow).

The example order and sharding come from batching.py; augmentation uses
stateless TF ops keyed by (seed, epoch, step), so resumed runs and any number
of hosts see the same batches.
"""
from typing import Iterator

import numpy as np
import tensorflow as tf

from cnn.datasets import DatasetSpec
from cnn.batching import AUGMENTATIONS, Shard, epoch_permutation, steps_per_epoch
from cnn.errors import unknown_name

# tf.data must not take accelerator memory that JAX needs.
tf.config.set_visible_devices([], "GPU")

def normalize(images: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
  """uint8 pixels -> float32 with zero mean, unit variance per channel."""
  images = tf.cast(images, tf.float32) / 255.0
  return (images - tf.constant(spec.mean)) / tf.constant(spec.std)


def draw_crops_and_flips(seed: tf.Tensor, n: int, padding: int, flip: bool
                         ) -> tuple[tf.Tensor, tf.Tensor]:
  """Per-image crop offsets [n, 2] in [0, 2*padding] and flip flags [n]."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  offsets = tf.random.stateless_uniform([n, 2], crop_seed, 0, 2 * padding + 1, tf.int32)
  flips = tf.random.stateless_uniform([n], flip_seed) < (0.5 if flip else 0.0)
  return offsets, flips


def pad_crop_flip(images: tf.Tensor, offsets: tf.Tensor, flips: tf.Tensor,
                  padding: int) -> tf.Tensor:
  """He et al. (2016) CIFAR augmentation on a whole batch: zero-pad each side
  by `padding`, crop the original size at `offsets`, mirror where `flips`."""
  height, width = images.shape[1], images.shape[2]
  padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
  rows = offsets[:, :1] + tf.range(height)[None, :]
  cols = offsets[:, 1:] + tf.range(width)[None, :]
  cols = tf.where(flips[:, None], tf.reverse(cols, axis=[1]), cols)
  images = tf.gather(padded, rows, axis=1, batch_dims=1)
  return tf.gather(images, cols, axis=2, batch_dims=1)


def draw_cutout_centres(seed: tf.Tensor, n: int, height: int, width: int) -> tf.Tensor:
  """[n, 2] square centres, uniform over the image, so a square may stick out
  of the border (DeVries & Taylor 2017, Sec. 3.2)."""
  centres = tf.random.stateless_uniform([n, 2], seed, 0, max(height, width), tf.int32)
  return tf.minimum(centres, [height - 1, width - 1])


def cutout_mask(centres: tf.Tensor, height: int, width: int, size: int) -> tf.Tensor:
  """[n, height, width, 1] float mask, 0 on the `size` x `size` square around
  each of `centres` [n, 2] and 1 elsewhere."""
  low = centres - size // 2
  rows = tf.range(height)[None, :]
  cols = tf.range(width)[None, :]
  in_rows = (rows >= low[:, :1]) & (rows < low[:, :1] + size)  # [n, height]
  in_cols = (cols >= low[:, 1:]) & (cols < low[:, 1:] + size)  # [n, width]
  hole = in_rows[:, :, None] & in_cols[:, None, :]
  return tf.cast(~hole, tf.float32)[..., None]


def train_batches(images: np.ndarray, labels: np.ndarray, *, spec: DatasetSpec,
                  shard: Shard, seed: int, epoch: int, start_step: int = 0,
                  augment: str = "pad_crop_flip", crop_padding: int = 4, cutout: int = 0
                  ) -> Iterator[dict[str, np.ndarray]]:
  """This process's part of each global training batch of one epoch, from
  `start_step` on. Yields {"image": float32 NHWC, "label": int32}."""
  if augment not in AUGMENTATIONS:
    raise unknown_name("augmentation", augment, AUGMENTATIONS)
  steps = steps_per_epoch(len(images), shard.global_batch_size)
  order = epoch_permutation(seed, epoch, len(images))[: steps * shard.global_batch_size]
  order = order.reshape(steps, shard.global_batch_size)
  step_ids = np.arange(start_step, steps, dtype=np.int64)
  ds = tf.data.Dataset.from_tensor_slices((order[start_step:, shard.local_slice()], step_ids))
  images_t, labels_t = tf.constant(images), tf.constant(labels)

  def make_batch(indices, step):
    batch = tf.gather(images_t, indices)
    # Random draws are for the whole global batch, then sliced: independent of sharding.
    key = tf.stack([tf.constant(seed, tf.int64), tf.constant(epoch, tf.int64) * 1_000_003 + step])
    local = shard.local_slice()
    if augment != "none":
      offsets, flips = draw_crops_and_flips(
          key, shard.global_batch_size, crop_padding, augment == "pad_crop_flip")
      batch = pad_crop_flip(batch, offsets[local], flips[local], crop_padding)
    batch = normalize(batch, spec)
    if cutout:  # after normalisation, so the hole is the dataset mean
      height, width = spec.image_shape[:2]
      centres = draw_cutout_centres(tf.random.experimental.stateless_fold_in(key, 1),
                                    shard.global_batch_size, height, width)
      mask = cutout_mask(centres, height, width, cutout)
      batch = batch * mask[local]
    return {"image": batch, "label": tf.gather(labels_t, indices)}

  ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(2).as_numpy_iterator()
