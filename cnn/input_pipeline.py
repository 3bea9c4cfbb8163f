"""Training batches fed from the host with tf.data (the default feed;
`config.data.on_device=True` keeps the split on the accelerator instead,
device_pipeline.py, and needs no TensorFlow).

This pipeline only orders, shards and prefetches: it yields this process's
rows of each global batch as uint8 pixels (4x fewer bytes to the device than
float32) and int32 labels. Augmentation and normalisation happen on the
accelerator, inside the train step (cnn/augment/), the same for both feeds.
The order comes from batching.py, a pure function of (seed, epoch), so
resumed runs and any number of hosts see the same batches.
"""
from typing import Iterator

import numpy as np
import tensorflow as tf

from cnn.batching import Shard, epoch_order

# tf.data must not take accelerator memory that JAX needs.
tf.config.set_visible_devices([], "GPU")


def train_batches(images: np.ndarray, labels: np.ndarray, *, shard: Shard, seed: int,
                  epoch: int, start_step: int = 0, prefetch: int = 2
                  ) -> Iterator[dict[str, np.ndarray]]:
  """This process's part of each global training batch of one epoch, from
  `start_step` on: {"image": uint8 NHWC, "label": int32}, gathered by
  tf.data's threads, `prefetch` batches ahead."""
  order = epoch_order(seed, epoch, len(images), shard.global_batch_size)
  ds = tf.data.Dataset.from_tensor_slices(order[start_step:, shard.local_slice()])
  images_t, labels_t = tf.constant(images), tf.constant(labels.astype(np.int32))
  ds = ds.map(lambda indices: {"image": tf.gather(images_t, indices),
                               "label": tf.gather(labels_t, indices)},
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(prefetch).as_numpy_iterator()
