"""Augmentations that mix two images and their labels: mixup and CutMix.

Both pair image i with image n-1-i of the global batch (its mirror in the
batch; the order is already a random permutation) and return soft targets
[n, classes] that the loss uses instead of the labels. torchvision's
references roll the batch by one instead; either partner is a random image.
"""
import jax
import jax.numpy as jnp


def one_hot(labels: jnp.ndarray, num_classes: int) -> jnp.ndarray:
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def mix_targets(targets: jnp.ndarray, lam: jnp.ndarray) -> jnp.ndarray:
  """lam * own target + (1 - lam) * the partner's (the batch mirror)."""
  return lam * targets + (1 - lam) * targets[::-1]


def mixup(images: jnp.ndarray, targets: jnp.ndarray, key: jax.Array, alpha: float
          ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Zhang et al. (2018): one lam ~ Beta(alpha, alpha) per batch; images
  and targets blended with their partners by lam."""
  lam = jax.random.beta(key, alpha, alpha)
  return lam * images + (1 - lam) * images[::-1], mix_targets(targets, lam)


def cutmix_box(key: jax.Array, lam: jnp.ndarray, height: int, width: int
               ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """torchvision's CutMix box: centre uniform over the pixels, half-sides
  int(0.5 * sqrt(1 - lam) * side), clipped to the image. Returns (y1, y2,
  x1, x2)."""
  row_key, col_key = jax.random.split(key)
  cy = jax.random.randint(row_key, (), 0, height)
  cx = jax.random.randint(col_key, (), 0, width)
  r = 0.5 * jnp.sqrt(1.0 - lam)
  half_h = jnp.floor(r * height).astype(jnp.int32)
  half_w = jnp.floor(r * width).astype(jnp.int32)
  return (jnp.maximum(cy - half_h, 0), jnp.minimum(cy + half_h, height),
          jnp.maximum(cx - half_w, 0), jnp.minimum(cx + half_w, width))


def cutmix(images: jnp.ndarray, targets: jnp.ndarray, key: jax.Array, alpha: float
           ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Yun et al. (2019): one lam ~ Beta(alpha, alpha) and one box per batch;
  the box of each image is replaced by its partner's, and the targets are
  mixed by the area actually kept (lam adjusted for the clipped box)."""
  lam_key, box_key = jax.random.split(key)
  lam = jax.random.beta(lam_key, alpha, alpha)
  _, height, width, _ = images.shape
  y1, y2, x1, x2 = cutmix_box(box_key, lam, height, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = ((rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2))[None, :, :, None]
  kept = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
  return jnp.where(inside, images[::-1], images), mix_targets(targets, kept)


def mix(images: jnp.ndarray, targets: jnp.ndarray, key: jax.Array, mixup_alpha: float,
        cutmix_alpha: float) -> tuple[jnp.ndarray, jnp.ndarray]:
  """mixup, CutMix, or with both on one of them per batch at even odds
  (timm's Mixup with switch_prob 0.5; torchvision's RandomChoice)."""
  choice_key, mixup_key, cutmix_key = jax.random.split(key, 3)
  if mixup_alpha and not cutmix_alpha:
    return mixup(images, targets, mixup_key, mixup_alpha)
  if cutmix_alpha and not mixup_alpha:
    return cutmix(images, targets, cutmix_key, cutmix_alpha)
  use_cutmix = jax.random.bernoulli(choice_key)
  return jax.lax.cond(use_cutmix,
                      lambda: cutmix(images, targets, cutmix_key, cutmix_alpha),
                      lambda: mixup(images, targets, mixup_key, mixup_alpha))
