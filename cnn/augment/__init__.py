"""Every augmentation of a training batch, defined once, run on the accelerator.

Both feeds (tf.data on the host, input_pipeline.py; the split kept on the
devices, device_pipeline.py) deliver uint8 images and int labels. Inside the
jitted train step, `make_augment(config, spec)` turns them into the float32
normalised images and soft targets the loss sees, in this order:

  1. policy    (policies.py) POLICIES[config.auto_augment]: RandAugment,
                             TrivialAugmentWide, AutoAugment-CIFAR10 (uint8, PIL's ops),
                             before the crop as in the AutoAugment, RandAugment and
                             TrivialAugment code for CIFAR
  2. geometry  (basic.py)    GEOMETRY[config.augment]: pad-crop-flip (He et al. 2016)
  3. normalise (basic.py)
  4. erasing   (basic.py)    config.cutout, config.random_erasing (holes = the mean)
  5. mixing    (mixing.py)   config.mixup_alpha, config.cutmix_alpha -> soft targets

Stage s draws from fold_in(key, s), where key is `step_key(seed, epoch,
step)`, and every draw is made for the whole global batch: a resumed run and
any number of devices or hosts see the same batches.

Adding an augmentation: write it as a pure function of the batch and a key
in the file of its stage, and add its switch to configs/default.py (a test
fails until config_validation.py has a rule for it).
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from cnn.augment import basic, mixing
from cnn.augment.basic import normalize
from cnn.augment.policies import POLICIES, make_policy
from cnn.datasets import DatasetSpec
from cnn.errors import unknown_name

__all__ = ["GEOMETRY", "POLICIES", "STAGES", "augment_batch", "make_augment", "normalize",
           "step_key"]

# config.augment -> (images, key, padding) -> images
GEOMETRY: dict[str, Callable] = {
    "none": lambda images, key, padding: images,
    "pad_crop": functools.partial(basic.random_pad_crop_flip, flip=False),
    "pad_crop_flip": functools.partial(basic.random_pad_crop_flip, flip=True),
}
STAGES = ("policy", "geometry", "cutout", "random_erasing", "mixing")

Batch = dict[str, jnp.ndarray]


def step_key(seed: int, epoch: jnp.ndarray, step: jnp.ndarray) -> jax.Array:
  """The key of every augmentation draw of training step `step` of `epoch`."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), step)


def augment_batch(images: jnp.ndarray, labels: jnp.ndarray, key: jax.Array, *,
                  spec: DatasetSpec, geometry: str = "pad_crop_flip", crop_padding: int = 4,
                  policy: Callable = POLICIES["none"](), cutout: int = 0,
                  random_erasing: float = 0.0, mixup_alpha: float = 0.0,
                  cutmix_alpha: float = 0.0) -> Batch:
  """uint8 images [n, H, W, C] and labels [n] -> {"image": float32 normalised,
  "label": the labels, "target": float32 [n, classes] (one-hot, or mixed)}."""
  if geometry not in GEOMETRY:
    raise unknown_name("augment", geometry, GEOMETRY)
  keys = dict(zip(STAGES, (jax.random.fold_in(key, i) for i in range(len(STAGES)))))
  images = jax.vmap(policy)(images, jax.random.split(keys["policy"], images.shape[0]))
  images = GEOMETRY[geometry](images, keys["geometry"], crop_padding)
  images = normalize(images, spec.mean, spec.std)
  if cutout:
    images = basic.cutout(images, keys["cutout"], cutout)
  if random_erasing:
    images = basic.random_erasing(images, keys["random_erasing"], random_erasing)
  targets = mixing.one_hot(labels, spec.num_classes)
  if mixup_alpha or cutmix_alpha:
    images, targets = mixing.mix(images, targets, keys["mixing"], mixup_alpha, cutmix_alpha)
  return {"image": images, "label": labels, "target": targets}


def make_augment(config: ml_collections.ConfigDict, spec: DatasetSpec
                 ) -> Callable[[jnp.ndarray, jnp.ndarray, jax.Array], Batch]:
  """`augment_batch` with the config's switches: (uint8 images, labels, key)
  -> batch. Unknown names raise the one-line error listing the valid ones."""
  if config.augment not in GEOMETRY:
    raise unknown_name("augment", config.augment, GEOMETRY)
  policy = make_policy(config.auto_augment, num_ops=config.randaugment_num_ops,
                       magnitude=config.randaugment_magnitude)
  return functools.partial(
      augment_batch, spec=spec, geometry=config.augment, crop_padding=config.crop_padding,
      policy=policy, cutout=config.cutout, random_erasing=config.random_erasing,
      mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha)
