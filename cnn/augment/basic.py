"""The classic per-image augmentations: pad-crop-flip on uint8 pixels, the
normalisation, and the two erasing methods that act on normalised images.

Each op takes the whole (global) batch and one key, and makes its random
draws for the whole batch at once, so the draws do not depend on how the
batch is sharded over devices or hosts.
"""
import jax
import jax.numpy as jnp
from jax import lax


def normalize(images: jnp.ndarray, mean: tuple[float, ...], std: tuple[float, ...]
              ) -> jnp.ndarray:
  """uint8 pixels -> float32 with zero mean, unit variance per channel, given
  the per-channel `mean` and `std` of [0, 1] pixels (the one definition:
  training, evaluation and the predictor all call it)."""
  images = jnp.asarray(images).astype(jnp.float32) / jnp.float32(255.0)
  return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def pad_crop_flip(images: jnp.ndarray, offsets: jnp.ndarray, flips: jnp.ndarray,
                  padding: int) -> jnp.ndarray:
  """He et al. (2016) CIFAR augmentation: zero-pad each side by `padding`,
  crop the original size at `offsets` [n, 2] (row, column of the crop's top
  left corner in the padded image, in [0, 2 * padding]), mirror where `flips`
  [n] (torchvision's RandomCrop(size, padding) + RandomHorizontalFlip)."""
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  crop = jax.vmap(lambda image, at: lax.dynamic_slice(image, (at[0], at[1], 0),
                                                      (height, width, channels)))
  images = crop(padded, offsets)
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def random_pad_crop_flip(images: jnp.ndarray, key: jax.Array, padding: int, flip: bool
                         ) -> jnp.ndarray:
  """pad_crop_flip with uniform offsets and, if `flip`, even odds of a mirror."""
  crop_key, flip_key = jax.random.split(key)
  n = images.shape[0]
  offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(flip_key, 0.5 if flip else 0.0, (n,))
  return pad_crop_flip(images, offsets, flips, padding)


def box_mask(top: jnp.ndarray, left: jnp.ndarray, box_height: jnp.ndarray,
             box_width: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
  """[n, height, width, 1] bool, True inside each image's box (rows
  [top, top + box_height), columns [left, left + box_width); the box may
  stick out of the image)."""
  rows, cols = jnp.arange(height)[None, :], jnp.arange(width)[None, :]
  in_rows = (rows >= top[:, None]) & (rows < (top + box_height)[:, None])
  in_cols = (cols >= left[:, None]) & (cols < (left + box_width)[:, None])
  return (in_rows[:, :, None] & in_cols[:, None, :])[..., None]


def cutout(images: jnp.ndarray, key: jax.Array, size: int) -> jnp.ndarray:
  """DeVries & Taylor (2017): zero a `size` x `size` square of each
  normalised image (so the hole is the dataset mean), centred uniformly over
  the image, so a square may stick out of the border (their Sec. 3.2)."""
  n, height, width, _ = images.shape
  centres = jax.random.randint(key, (n, 2), 0, max(height, width))
  centres = jnp.minimum(centres, jnp.asarray([height - 1, width - 1]))
  low = centres - size // 2
  hole = box_mask(low[:, 0], low[:, 1], jnp.full((n,), size), jnp.full((n,), size),
                  height, width)
  return jnp.where(hole, 0.0, images).astype(images.dtype)


ERASING_SCALE = (0.02, 0.33)  # torchvision.transforms.RandomErasing's defaults
ERASING_RATIO = (0.3, 3.3)
ERASING_ATTEMPTS = 10


def erasing_boxes(key: jax.Array, n: int, height: int, width: int
                  ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """torchvision's RandomErasing.get_params for n images at once: up to 10
  attempts of an area fraction ~ U(0.02, 0.33) and a log-uniform aspect
  ratio in (0.3, 3.3); h = round(sqrt(area * ratio)), w = round(sqrt(area
  / ratio)); the first attempt with h < height and w < width is placed
  uniformly; none fitting means no erasing. Returns (top, left, h, w,
  found) with shapes [n]."""
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  shape = (n, ERASING_ATTEMPTS)
  area = height * width * jax.random.uniform(area_key, shape, minval=ERASING_SCALE[0],
                                             maxval=ERASING_SCALE[1])
  log_ratio = jax.random.uniform(ratio_key, shape, minval=jnp.log(ERASING_RATIO[0]),
                                 maxval=jnp.log(ERASING_RATIO[1]))
  ratio = jnp.exp(log_ratio)
  h = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
  fits = (h < height) & (w < width)
  first = jnp.argmax(fits, axis=1)  # the first attempt that fits (0 if none does)
  pick = lambda a: jnp.take_along_axis(a, first[:, None], axis=1)[:, 0]
  h, w, found = pick(h), pick(w), jnp.any(fits, axis=1)
  top = jnp.floor(jax.random.uniform(top_key, (n,)) * (height - h + 1)).astype(jnp.int32)
  left = jnp.floor(jax.random.uniform(left_key, (n,)) * (width - w + 1)).astype(jnp.int32)
  return top, left, h, w, found


def random_erasing(images: jnp.ndarray, key: jax.Array, probability: float) -> jnp.ndarray:
  """Zhong et al. (2020) as torchvision's RandomErasing(p, value=0) after
  Normalize: with `probability`, a random rectangle of the normalised image
  becomes 0, the dataset mean."""
  n, height, width, _ = images.shape
  apply_key, box_key = jax.random.split(key)
  top, left, h, w, found = erasing_boxes(box_key, n, height, width)
  erase = found & jax.random.bernoulli(apply_key, probability, (n,))
  hole = box_mask(top, left, h, w, height, width) & erase[:, None, None, None]
  return jnp.where(hole, 0.0, images).astype(images.dtype)
