"""Units and residual blocks that the model families compose.

Every block takes the `conv`/`norm`/`act` factories of `LayerSpec.layers`
(layers.py), so one definition serves fp32 and bf16, training and evaluation,
global and per-device BatchNorm. Each unit lives here once:

- `ConvNormAct` (conv-BN-ReLU, Ioffe & Szegedy 2015) and its pre-activation
  mirror `NormActConv` (BN-ReLU-conv, He et al. 2016b), optionally grouped or
  depthwise: Inception, MobileNet and DenseNet are built from them.
- Residual blocks: `BasicBlockV1` (He et al. 2016), `BasicBlockV2` (full
  pre-activation, He et al. 2016b, Fig. 4e; with the dropout of Zagoruyko &
  Komodakis 2016 it is the wide-ResNet block), `BottleneckV1` (post-activation
  bottleneck, He et al. 2016, Fig. 5; with a grouped 3x3 it is ResNeXt's block,
  Xie et al. 2017, Fig. 3c) and `BottleneckV2` (pre-activation bottleneck).
- `SqueezeExcite` (Hu et al. 2018): every residual block takes `se_reduction`
  (0 = off) and then recalibrates its residual branch before the addition, so
  any ResNet family becomes its SE variant with one model kwarg.

The residual blocks keep the parameter names they had in resnet.py (flax's
automatic `Conv_0`, `BatchNorm_0`, ... and `Shortcut_0`): checkpoints of the
seed ResNets still load, and SE adds a submodule `se` without renaming any.
"""
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn.models.layers import norm_act

ModuleDef = Any

SHORTCUTS = ("projection", "zero_pad")


class ConvNormAct(nn.Module):
  """conv -> BN -> ReLU, the unit of post-activation networks. `groups` > 1
  splits the channels into groups (ResNeXt); `groups` equal to the input
  channels makes the conv depthwise (MobileNet)."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  groups: int = 1
  conv: ModuleDef = None
  norm: ModuleDef = None
  act: Callable = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = self.conv(self.features, self.kernel_size, (self.strides, self.strides),
                  feature_group_count=self.groups, name="conv")(x)
    return norm_act(self.norm, self.act, x, name="bn")


class NormActConv(nn.Module):
  """BN -> ReLU -> conv, the unit of pre-activation networks (He et al.
  2016b; DenseNet's "composite function", Huang et al. 2017, Sec. 3)."""
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  conv: ModuleDef = None
  norm: ModuleDef = None
  act: Callable = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = norm_act(self.norm, self.act, x, name="bn")
    return self.conv(self.features, self.kernel_size, (self.strides, self.strides),
                     name="conv")(x)


class SqueezeExcite(nn.Module):
  """Squeeze-and-Excitation (Hu et al. 2018, Sec. 3, Fig. 3): global average
  pool ("squeeze"), a bottleneck of two fully connected layers C -> C/r -> C
  with ReLU then sigmoid ("excitation"), and a per-channel rescaling of the
  input. The FC layers are 1x1 convs with biases, as in the authors' release,
  so each SE adds 2 * C * (C // r) + C // r + C parameters (C // r at least 1:
  ResNet-20's 16-channel stage with r = 16 keeps one hidden unit)."""
  reduction: int
  conv: ModuleDef
  act: Callable

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.act(self.conv(max(1, channels // self.reduction), (1, 1), use_bias=True,
                           name="reduce")(s))
    s = nn.sigmoid(self.conv(channels, (1, 1), use_bias=True, name="expand")(s))
    return x * s


def squeeze_excite(y: jnp.ndarray, reduction: int, conv: ModuleDef, act: Callable
                   ) -> jnp.ndarray:
  """The residual branch `y`, recalibrated by SE when `reduction` > 0. Hu et
  al. (Fig. 3) put SE on the branch before the addition, so the identity path
  stays untouched."""
  return SqueezeExcite(reduction, conv, act, name="se")(y) if reduction else y


def last_norm(norm: ModuleDef, zero_init: bool) -> ModuleDef:
  """The BatchNorm that ends a post-activation residual branch; with
  `zero_init` its scale starts at 0, so every block starts as the identity
  (Goyal et al. 2017, Sec. 5.1; timm's `zero_init_last`)."""
  return functools.partial(norm, scale_init=nn.initializers.zeros) if zero_init else norm


def last_conv(conv: ModuleDef, zero_init: bool) -> ModuleDef:
  """The convolution that ends a pre-activation residual branch (which has no
  BatchNorm after it); with `zero_init` its kernel starts at 0, the
  pre-activation form of the same identity start (timm's `zero_init_last`)."""
  return functools.partial(conv, kernel_init=nn.initializers.zeros) if zero_init else conv


def zero_pad_shortcut(x: jnp.ndarray, filters: int, strides: int) -> jnp.ndarray:
  """Option A: identity on a strided grid, extra channels filled with zeros."""
  x = x[:, ::strides, ::strides, :]
  extra = filters - x.shape[-1]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class Shortcut(nn.Module):
  """Matches the residual's shape to the block output's when they differ."""
  filters: int
  strides: int
  kind: str
  conv: ModuleDef
  norm: ModuleDef | None  # v2 projections are not normalised (He et al. 2016b).

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.kind == "zero_pad":
      return zero_pad_shortcut(x, self.filters, self.strides)
    x = self.conv(self.filters, (1, 1), (self.strides, self.strides), name="conv")(x)
    return x if self.norm is None else self.norm(name="bn")(x)


class BasicBlockV1(nn.Module):
  """conv-BN-ReLU-conv-BN, add the shortcut, ReLU (post-activation)."""
  filters: int
  strides: int
  shortcut: str
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  se_reduction: int = 0
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = norm_act(self.norm, self.act, y)
    y = last_norm(self.norm, self.zero_init_last)()(self.conv(self.filters, (3, 3))(y))
    y = squeeze_excite(y, self.se_reduction, self.conv, self.act)
    if x.shape != y.shape:
      x = Shortcut(self.filters, self.strides, self.shortcut, self.conv, self.norm)(x)
    return self.act(y + x)


class BasicBlockV2(nn.Module):
  """BN-ReLU-conv-BN-ReLU-conv, add the untouched shortcut (pre-activation).

  `dropout` (a factory, e.g. `nn.Dropout` with its rate and `deterministic`)
  goes between the two convolutions, after the second ReLU: the wide-ResNet
  block of Zagoruyko & Komodakis (2016, Sec. 2.4, Fig. 1d)."""
  filters: int
  strides: int
  shortcut: str
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  se_reduction: int = 0
  dropout: ModuleDef | None = None
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    preact = norm_act(self.norm, self.act, x)
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(preact)
    y = norm_act(self.norm, self.act, y)
    if self.dropout is not None:
      y = self.dropout()(y)
    y = last_conv(self.conv, self.zero_init_last)(self.filters, (3, 3))(y)
    y = squeeze_excite(y, self.se_reduction, self.conv, self.act)
    if x.shape != y.shape:
      x = Shortcut(self.filters, self.strides, self.shortcut, self.conv, None)(preact)
    return y + x


class BottleneckV1(nn.Module):
  """Post-activation bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand to
  `expansion` x filters, each followed by BN, ReLU after the addition.

  With `cardinality` C and `base_width` d the 3x3 is a grouped convolution of
  C groups and the inner width is C * d * filters / 64: ResNeXt's block in its
  grouped-conv form (Xie et al. 2017, Fig. 3c, and the authors' CIFAR code:
  d is the group width at the first stage, filters = 64). C = 1, d = 64 is
  ResNet's bottleneck (He et al. 2016, Fig. 5 right)."""
  filters: int
  strides: int
  shortcut: str
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  cardinality: int = 1
  base_width: int = 64
  expansion: int = 4
  se_reduction: int = 0
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    inner = self.cardinality * (self.filters * self.base_width // 64)
    y = norm_act(self.norm, self.act, self.conv(inner, (1, 1))(x))
    y = self.conv(inner, (3, 3), (self.strides, self.strides),
                  feature_group_count=self.cardinality)(y)
    y = norm_act(self.norm, self.act, y)
    y = last_norm(self.norm, self.zero_init_last)()(
        self.conv(self.filters * self.expansion, (1, 1))(y))
    y = squeeze_excite(y, self.se_reduction, self.conv, self.act)
    if x.shape != y.shape:
      x = Shortcut(self.filters * self.expansion, self.strides, self.shortcut,
                   self.conv, self.norm)(x)
    return self.act(y + x)


class BottleneckV2(nn.Module):
  """Pre-activation bottleneck: 1x1 reduce, 3x3, 1x1 expand to 4x filters."""
  filters: int
  strides: int
  shortcut: str
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  expansion: int = 4
  se_reduction: int = 0
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    preact = norm_act(self.norm, self.act, x)
    y = self.conv(self.filters, (1, 1))(preact)
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(
        norm_act(self.norm, self.act, y))
    y = last_conv(self.conv, self.zero_init_last)(self.filters * self.expansion, (1, 1))(
        norm_act(self.norm, self.act, y))
    y = squeeze_excite(y, self.se_reduction, self.conv, self.act)
    if x.shape != y.shape:
      x = Shortcut(self.filters * self.expansion, self.strides, self.shortcut,
                   self.conv, None)(preact)
    return y + x


def residual_stages(x: jnp.ndarray, block: Callable[..., nn.Module],
                    widths: Sequence[int], blocks_per_stage: int,
                    barrier: Callable[[jnp.ndarray], jnp.ndarray]) -> jnp.ndarray:
  """The CIFAR ResNet body (He et al. 2016, Sec. 4.2), which wide ResNets and
  ResNeXt-29 keep: one stage per width, `blocks_per_stage` blocks each, the
  first block of every stage after the first halving the resolution.

  `block(filters=..., strides=..., name=...)` builds one block; call this from
  a compact `__call__`, whose module becomes the blocks' parent (names
  `stage{s}_block{b}`, as in the seed ResNets). Each block output passes
  `barrier`, the model's `spec.barrier` (the identity, or on the CPU
  cnn/kernels' fusion barrier: same values, faster)."""
  for stage, width in enumerate(widths):
    for b in range(blocks_per_stage):
      strides = 2 if stage > 0 and b == 0 else 1
      x = block(filters=width, strides=strides, name=f"stage{stage + 1}_block{b + 1}")(x)
      x = barrier(x)
  return x


def make_dropout(rate: float, train: bool) -> ModuleDef | None:
  """A dropout factory for blocks, or None when there is nothing to drop."""
  return functools.partial(nn.Dropout, rate, deterministic=not train) if rate else None
