"""What goes into each batch, without TensorFlow: who feeds which slice of a
global batch, the seeded example order, and the evaluation batches.

Every random choice is a pure function of (seed, epoch, step): the epoch's
example order is a seeded permutation, and augmentation draws (cnn/augment/,
in the train step) are keyed by the same numbers. Hence
  * a run resumed at step k sees exactly the batches an uninterrupted run sees;
  * the global batch does not depend on how many devices or hosts share it:
    each process takes its contiguous slice of every global batch.
"""
import dataclasses
from typing import Iterator

import numpy as np

from cnn.errors import UserError


@dataclasses.dataclass(frozen=True)
class Shard:
  """Which slice of every global batch this process feeds."""
  global_batch_size: int
  process_index: int = 0
  process_count: int = 1

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.process_count

  def local_slice(self) -> slice:
    start = self.process_index * self.local_batch_size
    return slice(start, start + self.local_batch_size)


def check_batch_size(batch_size: int, device_count: int, what: str = "batch_size") -> None:
  if batch_size <= 0 or batch_size % device_count:
    raise UserError(f"config.{what}={batch_size} must be a positive multiple of the "
                    f"{device_count} devices; e.g. --config.{what}="
                    f"{max(1, round(batch_size / device_count)) * device_count}")


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full batches per epoch; the remainder is a different set each epoch."""
  return num_examples // global_batch_size


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def epoch_order(seed: int, epoch: int, num_examples: int, global_batch_size: int
                ) -> np.ndarray:
  """[steps, global_batch_size] example indices of every batch of the epoch."""
  steps = steps_per_epoch(num_examples, global_batch_size)
  order = epoch_permutation(seed, epoch, num_examples)[: steps * global_batch_size]
  return order.reshape(steps, global_batch_size)


def pad_to(array: np.ndarray, size: int) -> np.ndarray:
  """`array` with zero rows appended up to `size` rows: evaluation and the
  predictor run fixed-size batches (XLA compiles one shape), the last one padded."""
  missing = size - len(array)
  if missing <= 0:
    return array
  return np.concatenate([array, np.zeros((missing, *array.shape[1:]), array.dtype)])


def eval_batches(images: np.ndarray, labels: np.ndarray, *, shard: Shard
                 ) -> Iterator[dict[str, np.ndarray]]:
  """This process's part of every global evaluation batch: every example
  exactly once, in order, as uint8 pixels (normalised on the device, like
  training batches). The last global batch is padded with zero images whose
  `mask` is 0, so nothing is dropped or counted twice."""
  gbs, local = shard.global_batch_size, shard.local_slice()
  for start in range(0, len(images), gbs):
    stop = min(start + gbs, len(images))
    yield {"image": pad_to(images[start:stop], gbs)[local],
           "label": pad_to(labels[start:stop], gbs)[local],
           "mask": pad_to(np.ones(stop - start, np.float32), gbs)[local]}
