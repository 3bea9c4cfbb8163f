"""Building blocks shared by every model family, and the one place that
decides how they compute.

A model declares its architecture only. How its layers compute (the compute
dtype, per-device BatchNorm, the convolutions' padding and CPU algorithm, the
CPU fusion barrier) is a `LayerSpec`, one field of every model (`spec`):
`spec.layers(train)` gives the `conv`, `norm` and `act` factories the blocks
are built from, so one block class serves fp32 and bf16, training and
evaluation (the google/flax ImageNet example's pattern, where the model
receives `conv: ModuleDef` partials), and a new model needs no CPU-specific
fields. Parameters' names, shapes and initial values do not depend on the
spec (but for `norm_groups`, see `LayerSpec`), so checkpoints load under any.
"""
import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn.errors import UserError
from cnn.models import conv_algorithms, onednn
from cnn.settings import Section, Setting

ModuleDef = Any

# He et al. (2015, "Delving deep into rectifiers") initialisation, fan-out
# variant as in torchvision: keeps activations' variance stable through ReLUs.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def batchnorm_variables(module: nn.Module, features: int):
  """(scale, bias, running mean, running variance) of a BatchNorm module, with
  `nn.BatchNorm`'s names, shapes and initial values (so checkpoints are
  interchangeable between the three); call from a compact `__call__`."""
  scale = module.param("scale", module.scale_init, (features,), jnp.float32)
  bias = module.param("bias", nn.initializers.zeros, (features,), jnp.float32)
  ra_mean = module.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
  ra_var = module.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
  return scale, bias, ra_mean, ra_var


class BatchNorm(nn.Module):
  """`nn.BatchNorm` computed by this project where flax's does not do what a
  run needs; the same parameters, statistics, names (`BatchNorm_<i>` when a
  block leaves it unnamed) and momentum as `nn.BatchNorm`, so checkpoints are
  interchangeable whichever computed them. Two cases (`LayerSpec.layers`):

  - `num_groups` > 1: statistics computed separately on `num_groups` equal,
    contiguous slices of the batch, and running averages over the groups.
    With one group per device this is the per-device BatchNorm of `pmap`
    without `axis_name` (each device normalises its own sub-batch), yet the
    batch stays one sharded array: every group lives on one device, so no
    cross-device communication is needed.
  - one group, training on the CPU with oneDNN: the statistics, the
    normalisation and the gradient by oneDNN (cnn/models/onednn.py), with
    the ReLU that follows fused where `norm_act` asks. With bf16 compute it
    makes the ResNet-20 step 1.3x faster (760 vs 582 images/s, 2-core AMD
    EPYC); in fp32 the two are within noise (benchmarks/README.md).
  """
  use_running_average: bool = False
  num_groups: int = 1
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jnp.ndarray, relu: bool = False) -> jnp.ndarray:
    """BatchNorm of x; with `relu`, then a ReLU (in the same oneDNN pass there)."""
    scale, bias, ra_mean, ra_var = batchnorm_variables(self, x.shape[-1])
    if self.use_running_average:
      y = (x.astype(jnp.float32) - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = (y * scale + bias).astype(self.dtype)
      return nn.relu(y) if relu else y
    if self.num_groups > 1:
      y, mean, var = self._grouped(x, scale, bias)
      y = nn.relu(y) if relu else y
    elif x.ndim == 4:
      y, mean, var = onednn.batch_norm(x.astype(self.dtype), scale, bias, self.epsilon, relu)
    else:  # flax's computation (a BatchNorm on features, not images)
      t = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(t, axes)
      var = jnp.maximum(0.0, jnp.mean(jnp.square(t), axes) - jnp.square(mean))
      y = ((t - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias).astype(self.dtype)
      y = nn.relu(y) if relu else y
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var)
    return y

  def _grouped(self, x, scale, bias):
    """(normalised x, the groups' mean statistics) with per-group statistics."""
    groups = x.astype(jnp.float32).reshape(self.num_groups, -1, *x.shape[1:])
    axes = tuple(range(1, groups.ndim - 1))
    mean = jnp.mean(groups, axes, keepdims=True)
    var = jnp.mean(jnp.square(groups), axes, keepdims=True) - jnp.square(mean)
    y = (groups - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = (y.reshape(x.shape) * scale + bias).astype(self.dtype)
    return y, jnp.mean(mean, axis=0).reshape(-1), jnp.mean(var, axis=0).reshape(-1)


def norm_act(norm: ModuleDef, act: Callable, x: jnp.ndarray, **norm_kwargs) -> jnp.ndarray:
  """`act(norm(**norm_kwargs)(x))`: the BN-ReLU of every block. Where `norm`
  is oneDNN's `BatchNorm` (training on the CPU) and `act` is `nn.relu`, both
  run as one oneDNN pass (BatchNorm with its ReLU fused: one read and one
  write of the batch instead of two of each, and a bit mask for the gradient);
  elsewhere the two are applied one after the other. Parameters and names are
  those of `norm(**norm_kwargs)` either way."""
  module = norm(**norm_kwargs)
  if act is nn.relu and isinstance(module, BatchNorm):
    return module(x, relu=True)
  return act(module(x))


CONV_PADDINGS = ("symmetric", "same")


def symmetric_padding(kernel_size: Sequence[int]) -> str | list[tuple[int, int]]:
  """k // 2 zeros on both sides of each odd kernel dimension: the padding of
  the papers' Torch/PyTorch code (`padding=1` for 3x3). At stride 1 it equals
  "SAME"; at stride 2 on an even input "SAME" pads (0, 1) instead, which
  centres a strided 3x3 one pixel off the 1x1 / x[::2] shortcut. Even
  kernels have no symmetric choice and keep "SAME"."""
  if any(k % 2 == 0 for k in kernel_size):
    return "SAME"
  return [(k // 2, k // 2) for k in kernel_size]


def check_choice(option: str, value: str, valid: Sequence[str]) -> str:
  """`value`, or the one-line UserError that names the valid ones."""
  if value not in valid:
    raise UserError(f"unknown {option} {value!r}; valid: {', '.join(valid)}")
  return value


def conv_factory(padding: str, dtype: Any, algorithm: str = "auto") -> ModuleDef:
  """nn.Conv without bias, He-initialised, padded as `padding` says
  ("symmetric": the papers' (1, 1) for 3x3; "same": TensorFlow's, (0, 1) at
  stride 2). `algorithm` "auto" computes each layer on the CPU backend with
  the algorithms `conv_algorithms.choose` names for its shape (XLA's own
  convolution elsewhere); "xla" uses XLA's everywhere. Parameters are the
  same either way. "builtin" is "auto" without oneDNN's convolutions (the
  rule of the project's own algorithms)."""
  check_choice("conv_padding", padding, CONV_PADDINGS)
  check_choice("conv_algorithm", algorithm, conv_algorithms.CONV_ALGORITHM_CHOICES)
  base = functools.partial(nn.Conv, use_bias=False, kernel_init=he_normal, dtype=dtype)
  if algorithm != "xla":
    base = functools.partial(base, conv_general_dilated=functools.partial(
        conv_algorithms.conv_general_dilated, use_onednn=algorithm == "auto"))
  if padding == "same":
    return functools.partial(base, padding="SAME")

  def conv(features: int, kernel_size: Sequence[int], *args, **kwargs) -> nn.Conv:
    kernel_size = tuple(kernel_size)
    if len(args) < 2:  # padding is nn.Conv's fourth positional argument
      kwargs.setdefault("padding", symmetric_padding(kernel_size))
    return base(features, kernel_size, *args, **kwargs)
  return conv


def fusion_barrier(x: jnp.ndarray) -> jnp.ndarray:
  """Returns `x`, computed once and kept in memory, on the CPU backend.

  XLA:CPU's backward pass reads each convolution input transposed (batch
  dimension last) for the kernel gradient, and fuses the elementwise ops that
  made that input (BN, ReLU, the residual add) into the transpose. Through a
  chain of post-activation residual blocks, every block output is such an
  op of the previous one, so each transpose recomputes the whole stage so far:
  the cost grows with the square of the depth (measured with
  benchmarks/run.py: ResNet-56 v1 trains 1.8x faster with this barrier,
  ResNet-20 v1 1.2x). `lax.optimization_barrier` does not help: XLA:CPU strips
  it before fusion. A conditional is never fused, so its output is stored
  once; both branches return `x` unchanged, so the values are bit-identical.
  Other backends get `x` untouched (a conditional there may cost a sync).
  """
  if jax.default_backend() != "cpu":
    return x
  first = x.reshape(-1)[0]
  return jax.lax.cond(first == first, lambda t: t, lambda t: t * 1, x)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """How a model's layers compute, as opposed to what the model is.

  Every model family has one field of this type, `spec`, and builds its
  layers from it; architecture (depths, widths, shortcuts, SE, dropout,
  `zero_init_last`) stays on the model. Frozen and hashable, so a model stays
  a valid flax module and a static jit argument; `dataclasses.replace` makes
  variants (the export's XLA-only spec, a benchmark's). Parameters' names,
  shapes and initial values are the same under any spec, so checkpoints load
  under any (per-device BatchNorm included: its modules are named as
  `nn.BatchNorm`'s, so a `per_device` run's checkpoint is read by the
  predictor, the report and the exports, which build with one group). Bad
  `conv_padding`/`conv_algorithm` values fail here, when the spec is made,
  with the one-line UserError that lists the valid values.
  """
  dtype: Any = jnp.float32  # compute dtype; parameters are always float32
  norm_groups: int = 1  # > 1: per-device BatchNorm statistics (BatchNorm.num_groups)
  conv_padding: str = "symmetric"  # "same": TensorFlow's (0, 1) at stride 2 (symmetric_padding)
  conv_algorithm: str = "auto"  # "xla": XLA's convolution at every shape on CPU too
  fusion_barrier: bool = True  # False: no barrier after each residual block (fusion_barrier)

  def __post_init__(self):
    # One dtype object per dtype (jnp.float32, "float32" and np.dtype("float32") alike),
    # so that equal specs hash alike.
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    check_choice("conv_padding", self.conv_padding, CONV_PADDINGS)
    check_choice("conv_algorithm", self.conv_algorithm, conv_algorithms.CONV_ALGORITHM_CHOICES)

  def layers(self, train: bool) -> tuple[ModuleDef, ModuleDef, Callable]:
    """Returns (conv, norm, act) factories for a forward pass.

    BatchNorm uses PyTorch's defaults (momentum 0.1 == flax momentum 0.9,
    eps 1e-5), which the published CIFAR recipes were tuned with. With
    `norm_groups` > 1 its training statistics are per group (per device).
    Convolutions pad as `conv_padding` says and compute with `conv_algorithm`
    (see `conv_factory`); with "auto" and oneDNN available, BatchNorm trains
    through oneDNN too (`BatchNorm`).
    """
    dtype = self.dtype
    conv = conv_factory(self.conv_padding, dtype, self.conv_algorithm)
    if self.norm_groups == 1 and train and self.conv_algorithm == "auto" and (
        onednn.available() and onednn.supports(dtype)):
      norm = functools.partial(BatchNorm, momentum=0.9, epsilon=1e-5, dtype=dtype)
    elif self.norm_groups == 1:
      norm = functools.partial(
          nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
    else:
      norm = functools.partial(BatchNorm, use_running_average=not train,
                               num_groups=self.norm_groups, dtype=dtype)
    return conv, norm, nn.relu

  def barrier(self, x: jnp.ndarray) -> jnp.ndarray:
    """`fusion_barrier(x)` if the spec has it, else `x`: what residual models put
    after each block (`blocks.residual_stages`); models without chains of
    residual blocks do not need it and ignore the option."""
    return fusion_barrier(x) if self.fusion_barrier else x


DTYPES = ("float32", "bfloat16", "float16")
BATCHNORM_MODES = ("global", "per_device")
CONFIG = Section("layers", "how every layer computes: each model's LayerSpec (model_fn.build)", {
    "dtype": Setting("float32", "compute dtype ('bfloat16' for mixed precision); parameters "
                     "and optimiser state stay float32", choices=DTYPES),
    "batchnorm": Setting("global", "'global': statistics over the global batch (all devices); "
                         "'per_device': each device's sub-batch, like pmap without axis_name",
                         choices=BATCHNORM_MODES),
    "conv_padding": Setting("symmetric", "'symmetric': the papers' Torch/PyTorch (1, 1) for "
                            "3x3; 'same': TensorFlow's, (0, 1) at stride 2 (symmetric_padding)",
                            choices=CONV_PADDINGS),
    "conv_algorithm": Setting("auto", "'auto': each CPU convolution by the algorithm "
                              "conv_algorithms.choose names for its shape (oneDNN where built); "
                              "'builtin': the same rule without oneDNN; 'xla': XLA's own "
                              "everywhere", choices=conv_algorithms.CONV_ALGORITHM_CHOICES),
    "fusion_barrier": Setting(True, "CPU: keep each residual block's output in memory "
                              "(fusion_barrier; 1.8x faster ResNet-56 v1 training); same values",
                              example=False),
}, renamed={"dtype": "dtype", "batchnorm": "batchnorm",
            "model_kwargs.conv_padding": "conv_padding",
            "model_kwargs.conv_algorithm": "conv_algorithm",
            "model_kwargs.fusion_barrier": "fusion_barrier"})


def max_pool(x: jnp.ndarray, window_shape: Sequence[int], strides: Sequence[int],
             padding: str = "VALID") -> jnp.ndarray:
  """`nn.max_pool`, with the 2x2 stride-2 case (VGG's, ResNet-9's) computed as a
  reshape and a max on the CPU backend, where XLA's `reduce_window` gradient
  (`select_and_scatter`) is slow: 109 vs 13.5 ms at 128x32x32x64 fp32, 127 vs
  10 ms in bf16 (2-core AMD EPYC). The gradient goes to the first maximum of
  each window in row-major order, as `select_and_scatter` and PyTorch give it,
  so values and gradients are bitwise those of `nn.max_pool` (tested). Other
  windows, odd sizes (where "SAME" pads) and other backends use `nn.max_pool`."""
  if (tuple(window_shape) == (2, 2) and tuple(strides) == (2, 2) and x.ndim == 4
      and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0 and padding in ("SAME", "VALID")
      and jax.default_backend() == "cpu"):
    return _max_pool_2x2(x)
  return nn.max_pool(x, tuple(window_shape), strides=tuple(strides), padding=padding)


def _windows(x: jnp.ndarray) -> jnp.ndarray:
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def _max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  return _windows(x).max(axis=(2, 4))


def _max_pool_2x2_fwd(x):
  y = _max_pool_2x2(x)
  return y, (x, y)


def _max_pool_2x2_bwd(residuals, g):
  x, y = residuals
  windows = _windows(x)
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in (0, 1):
    row = []
    for j in (0, 1):  # row-major: the first maximum of the window takes the gradient
      hit = (windows[:, :, i, :, j] == y) & ~taken
      taken = taken | hit
      row.append(jnp.where(hit, g, jnp.zeros_like(g)))
    rows.append(jnp.stack(row, axis=3))
  return (jnp.stack(rows, axis=2).reshape(x.shape),)


_max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def classifier_head(x: jnp.ndarray, num_classes: int, dtype: Any) -> jnp.ndarray:
  """Dense layer to class logits, returned in float32 for a stable softmax."""
  return nn.Dense(num_classes, dtype=dtype)(x).astype(jnp.float32)
