"""The speedrun's augmentation, made once per epoch for the whole training
split on the device (airbench94's): alternating flips and random 2-pixel
translations of reflect-padded images.

- `alternating_flips`: a random half of the images is mirrored once per run
  (drawn from the run's key); every odd epoch mirrors all of them. So each
  image is seen mirrored and not in alternate epochs, deterministically
  (Jordan 2024, Sec. 3.6: better than flipping at random every epoch).
- `translate`: each image shifted by (dy, dx) in [-r, r]^2, drawn per image
  and epoch, from the image reflect-padded by r.
"""
import jax
import jax.numpy as jnp

def flip_mask(key: jax.Array, count: int) -> jnp.ndarray:
  """The images mirrored in even epochs (each with probability 1/2), fixed for a run."""
  return jax.random.uniform(key, (count,)) < 0.5


def alternating_flips(images: jnp.ndarray, mask: jnp.ndarray, epoch: int) -> jnp.ndarray:
  """Image i mirrored iff mask[i] in even epochs, iff not mask[i] in odd ones."""
  flipped = jnp.logical_xor(mask, epoch % 2 == 1)
  return jnp.where(flipped[:, None, None, None], images[:, :, ::-1], images)


def translate(images: jnp.ndarray, key: jax.Array, r: int = 2) -> jnp.ndarray:
  """Each image shifted by a uniform (dy, dx) in [-r, r]^2 over its reflect padding."""
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
  shifts = jax.random.randint(key, (n, 2), 0, 2 * r + 1)
  crop = lambda image, s: jax.lax.dynamic_slice(image, (s[0], s[1], 0), (h, w, c))  # noqa: E731
  return jax.vmap(crop)(padded, shifts)


def epoch_images(images: jnp.ndarray, mask: jnp.ndarray, epoch: int, key: jax.Array,
                 r: int = 2) -> jnp.ndarray:
  """The training split as epoch `epoch` sees it: flipped, then translated."""
  return translate(alternating_flips(images, mask, epoch), key, r)
