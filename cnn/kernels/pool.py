"""Max pooling over non-overlapping windows for the CPU backend (what
`model_fn.build` gives a model as `LayerSpec.pool` there)."""
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool(x: jnp.ndarray, window_shape: Sequence[int], strides: Sequence[int],
             padding: str = "VALID") -> jnp.ndarray:
  """`nn.max_pool`, with non-overlapping windows (stride = window: VGG's and
  ResNet-9's 2x2, the speedrun net's 2x2 on odd sizes and its 3x3) computed as
  a reshape and a max on the CPU backend, where XLA's `reduce_window`
  gradient (`select_and_scatter`) is slow: 109 vs 13.5 ms at 128x32x32x64
  fp32, 127 vs 10 ms in bf16 (2-core AMD EPYC). "VALID" drops the last rows
  and columns that fill no window, as `nn.max_pool` does (their gradient is
  0). The gradient goes to the first maximum of each window in row-major
  order, as `select_and_scatter` and PyTorch give it, so values and gradients
  are bitwise those of `nn.max_pool` (tested). Overlapping windows, and
  "SAME" where it pads, use `nn.max_pool`."""
  window = tuple(window_shape)
  fits = x.ndim == 4 and len(window) == 2 and window == tuple(strides)
  divides = fits and x.shape[1] % window[0] == 0 and x.shape[2] % window[1] == 0
  if fits and (padding == "VALID" or (padding == "SAME" and divides)):
    return _max_pool_windows(x, window)
  return nn.max_pool(x, window, strides=tuple(strides), padding=padding)


def _windows(x: jnp.ndarray, window: tuple[int, int]) -> jnp.ndarray:
  """x's whole windows as (N, H // kh, kh, W // kw, kw, C) (the rest dropped)."""
  (kh, kw), (n, h, w, c) = window, x.shape
  return x[:, :h - h % kh, :w - w % kw].reshape(n, h // kh, kh, w // kw, kw, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_windows(x: jnp.ndarray, window: tuple[int, int]) -> jnp.ndarray:
  return _windows(x, window).max(axis=(2, 4))


def _max_pool_windows_fwd(x, window):
  y = _max_pool_windows(x, window)
  return y, (x, y)


def _max_pool_windows_bwd(window, residuals, g):
  x, y = residuals
  windows = _windows(x, window)
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(window[0]):
    row = []
    for j in range(window[1]):  # row-major: the first maximum of the window takes the gradient
      hit = (windows[:, :, i, :, j] == y) & ~taken
      taken = taken | hit
      row.append(jnp.where(hit, g, jnp.zeros_like(g)))
    rows.append(jnp.stack(row, axis=3))
  grad = jnp.stack(rows, axis=2).reshape(windows.shape[0], -1, windows.shape[3] * window[1],
                                         x.shape[-1])
  # the rows and columns no window covers get no gradient
  return (jnp.pad(grad, ((0, 0), (0, x.shape[1] - grad.shape[1]),
                         (0, x.shape[2] - grad.shape[2]), (0, 0))),)


_max_pool_windows.defvjp(_max_pool_windows_fwd, _max_pool_windows_bwd)
