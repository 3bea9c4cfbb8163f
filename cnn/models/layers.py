"""Building blocks shared by every model family: what a layer is, not where
it runs.

A model declares its architecture only. How its layers compute is a
`LayerSpec`, one field of every model (`spec`), holding ready-made layer
factories: `conv` (padding, and the function that computes it), `norm`
(BatchNorm, per-device or not, and the module that trains it), `pool` (max
pooling) and `barrier` (what follows each residual block).
`spec.layers(train)` gives the `conv`, `norm` and `act` factories the blocks
are built from, so one block class serves fp32 and bf16, training and
evaluation (the google/flax ImageNet example's pattern, where the model
receives `conv: ModuleDef` partials), and a new model needs no
backend-specific fields.

The defaults are flax's own layers (XLA's convolution and BatchNorm
everywhere); `model_fn.build` swaps in the CPU kernels of `cnn/kernels/`
when it builds for the CPU backend. Nothing here asks where it runs.
Parameters' names, shapes and initial values do not depend on the spec (but
for `Norm.groups`, see `BatchNorm`), so checkpoints load under any.
"""
import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

# He et al. (2015, "Delving deep into rectifiers") initialisation, fan-out
# variant as in torchvision: keeps activations' variance stable through ReLUs.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# BatchNorm as PyTorch's defaults (momentum 0.1 == flax momentum 0.9, eps
# 1e-5), which the published CIFAR recipes were tuned with.
MOMENTUM, EPSILON = 0.9, 1e-5


def batchnorm_variables(module: nn.Module, features: int):
  """(scale, bias, running mean, running variance) of a BatchNorm module, with
  `nn.BatchNorm`'s names, shapes and initial values (so checkpoints are
  interchangeable between flax's and this project's); call from a compact
  `__call__` of a module with `scale_init` and `use_scale` (False: no scale
  parameter, as `nn.BatchNorm(use_scale=False)`; the scale is then 1)."""
  scale = (module.param("scale", module.scale_init, (features,), jnp.float32)
           if module.use_scale else jnp.ones((features,), jnp.float32))
  bias = module.param("bias", nn.initializers.zeros, (features,), jnp.float32)
  ra_mean = module.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
  ra_var = module.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
  return scale, bias, ra_mean, ra_var


def update_running_averages(module: nn.Module, ra_mean, ra_var, mean, var) -> None:
  """The running statistics' update of `nn.BatchNorm` (not while initialising)."""
  if not module.is_initializing():
    m = module.momentum
    ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
    ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var)


def running_average_norm(module: nn.Module, x, scale, bias, ra_mean, ra_var) -> jnp.ndarray:
  """BatchNorm in evaluation: normalised with the running statistics."""
  y = (x.astype(jnp.float32) - ra_mean.value) * jax.lax.rsqrt(ra_var.value + module.epsilon)
  return (y * scale + bias).astype(module.dtype)


class BatchNorm(nn.Module):
  """Per-device BatchNorm: `nn.BatchNorm` with statistics computed separately
  on `num_groups` equal, contiguous slices of the batch, and running averages
  over the groups; the same parameters, statistics, names (`BatchNorm_<i>`
  when a block leaves it unnamed) and momentum as `nn.BatchNorm`, so
  checkpoints are interchangeable. With one group per device this is the
  per-device BatchNorm of `pmap` without `axis_name` (each device normalises
  its own sub-batch), yet the batch stays one sharded array: every group
  lives on one device, so no cross-device communication is needed."""
  use_running_average: bool = False
  num_groups: int = 1
  momentum: float = MOMENTUM
  epsilon: float = EPSILON
  dtype: Any = jnp.float32
  use_scale: bool = True
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    scale, bias, ra_mean, ra_var = batchnorm_variables(self, x.shape[-1])
    if self.use_running_average:
      return running_average_norm(self, x, scale, bias, ra_mean, ra_var)
    groups = x.astype(jnp.float32).reshape(self.num_groups, -1, *x.shape[1:])
    axes = tuple(range(1, groups.ndim - 1))
    mean = jnp.mean(groups, axes, keepdims=True)
    var = jnp.mean(jnp.square(groups), axes, keepdims=True) - jnp.square(mean)
    y = (groups - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = (y.reshape(x.shape) * scale + bias).astype(self.dtype)
    update_running_averages(self, ra_mean, ra_var, jnp.mean(mean, axis=0).reshape(-1),
                            jnp.mean(var, axis=0).reshape(-1))
    return y


def norm_act(norm: ModuleDef, act: Callable, x: jnp.ndarray, **norm_kwargs) -> jnp.ndarray:
  """`act(norm(**norm_kwargs)(x))`: the BN-ReLU of every block. Where the norm
  module fuses the ReLU (`fuses_relu`: oneDNN's BatchNorm, cnn/kernels/) and
  `act` is `nn.relu`, both run as one pass (one read and one write of the
  batch instead of two of each); elsewhere one after the other. Parameters
  and names are those of `norm(**norm_kwargs)` either way."""
  module = norm(**norm_kwargs)
  if act is nn.relu and getattr(module, "fuses_relu", False):
    return module(x, relu=True)
  return act(module(x))


def symmetric_padding(kernel_size: Sequence[int]) -> str | list[tuple[int, int]]:
  """k // 2 zeros on both sides of each odd kernel dimension: the padding of
  the papers' Torch/PyTorch code (`padding=1` for 3x3). At stride 1 it equals
  "SAME"; at stride 2 on an even input "SAME" pads (0, 1) instead, which
  centres a strided 3x3 one pixel off the 1x1 / x[::2] shortcut. Even
  kernels have no symmetric choice and keep "SAME"."""
  if any(k % 2 == 0 for k in kernel_size):
    return "SAME"
  return [(k // 2, k // 2) for k in kernel_size]


# conv_padding -> the padding of a kernel size ("same": TensorFlow's, (0, 1) at stride 2)
CONV_PADDINGS: dict[str, Callable[[Sequence[int]], Any]] = {
    "symmetric": symmetric_padding, "same": lambda kernel_size: "SAME"}


@dataclasses.dataclass(frozen=True)
class Conv:
  """The convolution factory: `nn.Conv` without bias, He-initialised, padded
  as `padding` names (`CONV_PADDINGS`) unless a call passes its own, computed
  by `compute` (a drop-in for `lax.conv_general_dilated`, e.g. cnn/kernels'
  per-shape CPU algorithms; None: XLA's). Any keyword a call passes (dtype,
  use_bias, kernel_init, ...) overrides these."""
  padding: str = "symmetric"
  compute: Callable | None = None

  def __call__(self, features: int, kernel_size: Sequence[int], *args, **kwargs) -> nn.Conv:
    kernel_size = tuple(kernel_size)
    if len(args) < 2:  # padding is nn.Conv's fourth positional argument
      kwargs.setdefault("padding", CONV_PADDINGS[self.padding](kernel_size))
    if self.compute is not None:
      kwargs.setdefault("conv_general_dilated", self.compute)
    return nn.Conv(features, kernel_size, *args, **{"use_bias": False, "kernel_init": he_normal,
                                                    **kwargs})


@dataclasses.dataclass(frozen=True)
class Norm:
  """The BatchNorm factory: `groups` > 1 gives per-device statistics in
  training (`BatchNorm`); `training` is the module class that trains a
  one-group BatchNorm (cnn/kernels' oneDNN one on the CPU; None: flax's).
  Evaluation always normalises with the running statistics."""
  groups: int = 1
  training: type | None = None

  def __call__(self, train: bool, dtype: Any) -> ModuleDef:
    if self.groups > 1:
      return functools.partial(BatchNorm, use_running_average=not train,
                               num_groups=self.groups, dtype=dtype)
    if train and self.training is not None:
      return functools.partial(self.training, momentum=MOMENTUM, epsilon=EPSILON, dtype=dtype)
    return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=MOMENTUM,
                             epsilon=EPSILON, dtype=dtype)


def max_pool(x: jnp.ndarray, window_shape: Sequence[int], strides: Sequence[int],
             padding: str = "VALID") -> jnp.ndarray:
  """`nn.max_pool`, as `LayerSpec.pool` calls it."""
  return nn.max_pool(x, tuple(window_shape), strides=tuple(strides), padding=padding)


def identity(x: jnp.ndarray) -> jnp.ndarray:
  return x


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """How a model's layers compute, as opposed to what the model is.

  Every model family has one field of this type, `spec`, and builds its
  layers from it; architecture (depths, widths, shortcuts, SE, dropout,
  `zero_init_last`) stays on the model. Frozen and hashable by value (each
  factory is a frozen dataclass or a module-level function), so a model
  stays a valid flax module and a static jit argument; `dataclasses.replace`
  makes variants. Parameters' names, shapes and initial values are the same
  under any spec, so checkpoints load under any (per-device BatchNorm
  included: its modules are named as `nn.BatchNorm`'s, so a `per_device`
  run's checkpoint is read by the predictor, the report and the exports,
  which build with one group).
  """
  dtype: Any = jnp.float32  # compute dtype; parameters are always float32
  conv: Conv = Conv()
  norm: Norm = Norm()
  pool: Callable = max_pool  # (x, window_shape, strides, padding) -> pooled x
  barrier: Callable = identity  # after each residual block (blocks.residual_stages)

  def __post_init__(self):
    # One dtype object per dtype (jnp.float32, "float32" and np.dtype("float32") alike),
    # so that equal specs hash alike.
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))

  def layers(self, train: bool) -> tuple[ModuleDef, ModuleDef, Callable]:
    """Returns (conv, norm, act) factories for a forward pass, in the spec's dtype."""
    return (functools.partial(self.conv, dtype=self.dtype), self.norm(train, self.dtype),
            nn.relu)

  def portable(self) -> "LayerSpec":
    """The spec with flax's own layers (XLA's everywhere), same padding, groups and
    dtype: what an export runs on any platform. Same parameters and values."""
    return LayerSpec(dtype=self.dtype, conv=Conv(self.conv.padding),
                     norm=Norm(self.norm.groups))


def classifier_head(x: jnp.ndarray, num_classes: int, dtype: Any) -> jnp.ndarray:
  """Dense layer to class logits, returned in float32 for a stable softmax."""
  return nn.Dense(num_classes, dtype=dtype)(x).astype(jnp.float32)
