"""The speedrun's network (airbench94's, Jordan 2024, arXiv 2404.00498): a
frozen patch-whitening first layer, three conv groups of 64, 256, 256
channels, each conv starting as the identity on its first channels, BatchNorm
without a learned scale, GELU, a max-pool head. NHWC, pure flax.linen, its
layers built from a `LayerSpec` as every model's (cnn/models/layers.py):
flax's own by default, the CPU's kernels where train.py builds for the CPU
(cnn/kernels/), with the same parameters and values either way.

The whitening kernel is not a parameter: it is computed once per run from
training images (`whitening_kernel`) and passed in the `whiten` collection;
only its bias trains (for the first epochs: cnn/speedrun/optim.py).
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn.models.layers import Conv, LayerSpec

WIDTHS = (64, 256, 256)
WHITEN_SIZE = 2  # 2x2 patches
WHITEN_WIDTH = 2 * 3 * WHITEN_SIZE ** 2  # the eigenvectors and their negatives
# flax's own layers in float32 ("same" padding, as airbench's convs): the nets'
# default; train.layer_spec sets the dtype and, on the CPU, the CPU's kernels
LAYERS = LayerSpec(conv=Conv("same"))


def patches(images: jnp.ndarray, size: int = WHITEN_SIZE) -> jnp.ndarray:
  """Every `size` x `size` patch of float images (N, H, W, C), flattened in
  (h, w, c) order: (N * (H - size + 1) * (W - size + 1), size * size * C)."""
  n, h, w, c = images.shape
  shifted = [images[:, i:h - size + 1 + i, j:w - size + 1 + j]
             for i in range(size) for j in range(size)]
  return jnp.stack(shifted, axis=3).reshape(-1, size * size * c)


def whitening_kernel(images: jnp.ndarray, eps: float = 5e-4, size: int = WHITEN_SIZE
                     ) -> jnp.ndarray:
  """The HWIO kernel (size, size, C, 2 * size * size * C) that maps each patch of
  `images` (normalised float, NHWC) onto the eigenvectors of the patches'
  covariance scaled by 1/sqrt(eigenvalue + eps), then onto their negatives:
  the first half of its outputs has (near) identity covariance over the
  patches. float32, jittable (airbench fits it on the GPU, on 5,000 images)."""
  flat = patches(images.astype(jnp.float32), size)
  covariance = flat.T @ flat / len(flat)
  eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
  scaled = eigenvectors / jnp.sqrt(eigenvalues + eps)  # columns: one output channel each
  kernel = scaled.reshape(size, size, images.shape[-1], -1)
  return jnp.concatenate([kernel, -kernel], axis=-1)


def identity_init(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
  """PyTorch's default conv init (uniform, bound 1/sqrt(fan_in)), then the
  first min(in, out) output channels set to the identity (torch's `dirac_`):
  the conv starts by passing its input's channels through."""
  kh, kw, cin, cout = shape
  bound = 1 / np.sqrt(kh * kw * cin)
  kernel = jax.random.uniform(key, shape, dtype, -bound, bound)
  n = min(cin, cout)
  dirac = jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(cin, n, dtype=dtype))
  return kernel.at[..., :n].set(dirac)


def torch_bias_init(fan_in: int):
  """PyTorch's default conv/linear bias: uniform in +-1/sqrt(fan_in). airbench
  keeps it for the whitening layer's bias (its `reset` re-draws it; only the
  weight is replaced by the whitening kernel)."""
  bound = 1 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)


def unit_uniform(key: jax.Array, shape: tuple, dtype: Any = jnp.float32) -> jax.Array:
  """Uniform with standard deviation 1 (airbench's head: PyTorch's init rescaled)."""
  return jax.random.uniform(key, shape, dtype, -np.sqrt(3), np.sqrt(3))


class ConvGroup(nn.Module):
  """conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU."""
  width: int
  spec: LayerSpec = LAYERS

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    conv = functools.partial(self.spec.conv, self.width, (3, 3), padding="SAME",
                             kernel_init=identity_init, dtype=self.spec.dtype)
    # BatchNorm without a learned scale; torch momentum 0.4 (flax 0.6), eps 1e-12, in float32.
    norm = functools.partial(self.spec.norm(train, jnp.float32), momentum=0.6, epsilon=1e-12,
                             use_scale=False)
    x = self.spec.pool(conv(name="conv1")(x), (2, 2), (2, 2))
    x = nn.gelu(norm(name="norm1")(x), approximate=False).astype(self.spec.dtype)
    x = conv(name="conv2")(x)
    return nn.gelu(norm(name="norm2")(x), approximate=False).astype(self.spec.dtype)


class CifarNet(nn.Module):
  """airbench94's network; `variables["whiten"]["kernel"]` is the frozen first layer."""
  num_classes: int = 10
  widths: tuple[int, ...] = WIDTHS
  spec: LayerSpec = LAYERS

  @property
  def dtype(self) -> Any:
    """The compute dtype (the spec's)."""
    return self.spec.dtype

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    kernel = self.variable("whiten", "kernel", jnp.zeros,
                           (WHITEN_SIZE, WHITEN_SIZE, x.shape[-1], WHITEN_WIDTH)).value
    bias = self.param("whiten_bias", torch_bias_init(WHITEN_SIZE * WHITEN_SIZE * x.shape[-1]),
                      (WHITEN_WIDTH,))
    conv = self.spec.conv.compute or jax.lax.conv_general_dilated
    x = conv(x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), "VALID",
             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = nn.gelu(x + bias.astype(self.dtype), approximate=False)
    for i, width in enumerate(self.widths):
      x = ConvGroup(width, self.spec, name=f"group{i + 1}")(x, train)
    x = self.spec.pool(x, (3, 3), (3, 3)).reshape(len(x), -1)
    logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, name="head",
                      kernel_init=unit_uniform)(x)
    return logits.astype(jnp.float32) / x.shape[-1]
