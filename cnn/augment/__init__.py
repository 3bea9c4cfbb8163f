"""Every augmentation of a training batch, defined once, run on the accelerator.

Both feeds (tf.data on the host, input_pipeline.py; the split kept on the
devices, device_pipeline.py) deliver uint8 images and int labels. Inside the
jitted train step, `make_augment(config.augment, spec)` turns them into the float32
normalised images and soft targets the loss sees, through the stages of
`STAGES`, in this order (settings: `config.augment.*`):

  1. policy    (policies.py) POLICIES[policy]: RandAugment, TrivialAugmentWide,
                             AutoAugment-CIFAR10 (uint8, PIL's ops), before the crop as
                             in the AutoAugment, RandAugment and TrivialAugment code for CIFAR
  2. geometry  (basic.py)    GEOMETRY[geometry]: pad-crop-flip (He et al. 2016)
  3. normalize (basic.py)    the training split's per-channel mean and std
  4. erasing   (basic.py)    cutout, random_erasing (holes = the mean)
  5. mixing    (mixing.py)   mixup_alpha, cutmix_alpha -> soft targets

A stage with stream s draws from fold_in(key, s), where key is `step_key(seed,
epoch, step)`, and every draw is made for the whole global batch: a resumed run
and any number of devices or hosts see the same batches. Streams are fixed
numbers, not positions, so a new stage changes no other stage's draws.

Adding an augmentation: a pure function `(batch, key, settings, spec) -> batch`
in the file of its kind, one `Stage` line in `STAGES` (where it runs, the next
free stream) and its settings in `CONFIG` below (default, meaning, check).
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from cnn.augment import basic, mixing
from cnn.augment.basic import normalize
from cnn.augment.policies import POLICIES, make_policy
from cnn.datasets import DatasetSpec
from cnn.schema import Section, Setting, at_least, between, defaults, unknown_value

__all__ = ["CONFIG", "GEOMETRY", "POLICIES", "STAGES", "augment_batch", "make_augment",
           "normalize", "settings", "step_key"]

# config.augment.geometry -> (images, key, padding) -> images
GEOMETRY: dict[str, Callable] = {
    "none": lambda images, key, padding: images,
    "pad_crop": functools.partial(basic.random_pad_crop_flip, flip=False),
    "pad_crop_flip": functools.partial(basic.random_pad_crop_flip, flip=True),
}

Batch = dict[str, jnp.ndarray]  # "image", "label", "target" (one-hot or mixed)

CONFIG = Section("augment", "every augmentation, in STAGES order (cnn/augment/)", {
    "geometry": Setting("pad_crop_flip", "random crop of the padded image, and mirror "
                        "(He et al. 2016), or less", choices=GEOMETRY),
    "crop_padding": Setting(4, "pixels of zero padding before the random crop", at_least(0),
                            ">= 0"),
    "policy": Setting("none", "'none' | 'randaugment' (Cubuk et al. 2020) | "
                      "'trivialaugment_wide' (Muller & Hutter 2021) | 'autoaugment_cifar10' "
                      "(Cubuk et al. 2019): torchvision's op spaces and magnitudes, PIL's ops",
                      choices=POLICIES, example="randaugment"),
    "randaugment_num_ops": Setting(2, "'randaugment': ops applied to each image (N)",
                                   at_least(1), ">= 1"),
    "randaugment_magnitude": Setting(9, "'randaugment': M, of torchvision's 31 bins (0..30)",
                                     between(0, 30, high_open=False), "in [0, 30]"),
    "cutout": Setting(0, "side of the square zeroed at a random place in each image (DeVries "
                      "& Taylor 2017: 16 for CIFAR-10); 0 = off", at_least(0), ">= 0 (0 = off)",
                      example=16),
    "random_erasing": Setting(0.0, "probability of erasing a random rectangle of each image "
                              "(Zhong et al. 2020; torchvision's: area 2-33%, aspect 0.3-3.3, "
                              "value 0 after normalisation); 0 = off",
                              between(0, 1, high_open=False), "in [0, 1] (0 = off)",
                              example=0.25),
    "mixup_alpha": Setting(0.0, "mixup (Zhang et al. 2018): each image blended with its batch "
                           "mirror by lam ~ Beta(alpha, alpha), the loss likewise; 0 = off",
                           at_least(0), ">= 0 (0 = off)", example=0.2),
    "cutmix_alpha": Setting(0.0, "CutMix (Yun et al. 2019): a box of the batch mirror's image "
                            "pasted in, area 1 - lam, lam ~ Beta(alpha, alpha); 0 = off. With "
                            "mixup too, each batch uses one of them, even odds (timm)",
                            at_least(0), ">= 0 (0 = off)", example=1.0),
}, renamed={"augment": "geometry", "crop_padding": "crop_padding", "auto_augment": "policy",
            "randaugment_num_ops": "randaugment_num_ops",
            "randaugment_magnitude": "randaugment_magnitude", "cutout": "cutout",
            "random_erasing": "random_erasing", "mixup_alpha": "mixup_alpha",
            "cutmix_alpha": "cutmix_alpha"})


def settings(**overrides) -> ml_collections.ConfigDict:
  """`config.augment` at its defaults, with `overrides` (tests, benchmarks)."""
  section = defaults(CONFIG)
  section.update(overrides)
  return section


def _policy(batch: Batch, key, s, spec: DatasetSpec) -> Batch:
  del spec
  policy = make_policy(s.policy, num_ops=s.randaugment_num_ops,
                       magnitude=s.randaugment_magnitude)
  images = jax.vmap(policy)(batch["image"], jax.random.split(key, batch["image"].shape[0]))
  return {**batch, "image": images}


def _geometry(batch: Batch, key, s, spec: DatasetSpec) -> Batch:
  del spec
  return {**batch, "image": GEOMETRY[s.geometry](batch["image"], key, s.crop_padding)}


def _normalize(batch: Batch, key, s, spec: DatasetSpec) -> Batch:
  del key, s
  return {**batch, "image": normalize(batch["image"], spec.mean, spec.std)}


def _cutout(batch: Batch, key, s, spec: DatasetSpec) -> Batch:
  del spec
  return {**batch, "image": basic.cutout(batch["image"], key, s.cutout)} if s.cutout else batch


def _random_erasing(batch: Batch, key, s, spec: DatasetSpec) -> Batch:
  del spec
  if not s.random_erasing:
    return batch
  return {**batch, "image": basic.random_erasing(batch["image"], key, s.random_erasing)}


def _mixing(batch: Batch, key, s, spec: DatasetSpec) -> Batch:
  del spec
  if not (s.mixup_alpha or s.cutmix_alpha):
    return batch
  images, targets = mixing.mix(batch["image"], batch["target"], key, s.mixup_alpha,
                               s.cutmix_alpha)
  return {**batch, "image": images, "target": targets}


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of `augment_batch`: `apply(batch, key, settings, spec)`, drawing
  from `fold_in(step key, stream)` (None: it draws nothing)."""
  apply: Callable[..., Batch]
  stream: int | None


# name -> Stage, applied in this order.
STAGES: dict[str, Stage] = {
    "policy": Stage(_policy, 0),
    "geometry": Stage(_geometry, 1),
    "normalize": Stage(_normalize, None),
    "cutout": Stage(_cutout, 2),
    "random_erasing": Stage(_random_erasing, 3),
    "mixing": Stage(_mixing, 4),
}


def step_key(seed: int, epoch: jnp.ndarray, step: jnp.ndarray) -> jax.Array:
  """The key of every augmentation draw of training step `step` of `epoch`."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), step)


def augment_batch(images: jnp.ndarray, labels: jnp.ndarray, key: jax.Array, *,
                  spec: DatasetSpec, settings: ml_collections.ConfigDict) -> Batch:
  """uint8 images [n, H, W, C] and labels [n] -> {"image": float32 normalised,
  "label": the labels, "target": float32 [n, classes] (one-hot, or mixed)},
  through every stage of `STAGES` with `settings` (`config.augment`)."""
  batch = {"image": images, "label": labels,
           "target": mixing.one_hot(labels, spec.num_classes)}
  for stage in STAGES.values():
    stage_key = None if stage.stream is None else jax.random.fold_in(key, stage.stream)
    batch = stage.apply(batch, stage_key, settings, spec)
  return batch


def make_augment(section: ml_collections.ConfigDict, spec: DatasetSpec
                 ) -> Callable[[jnp.ndarray, jnp.ndarray, jax.Array], Batch]:
  """`augment_batch` with a config's `augment` section: (uint8 images,
  labels, key) -> batch. Unknown names raise the one-line error listing the
  valid ones."""
  if section.geometry not in GEOMETRY:
    raise unknown_value("augment.geometry", section.geometry, GEOMETRY)
  if section.policy not in POLICIES:
    raise unknown_value("augment.policy", section.policy, POLICIES)
  return functools.partial(augment_batch, spec=spec, settings=section)
