"""CIFAR ResNets: v1 post-activation and v2 pre-activation.

v1: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition"
    (2016), Section 4.2: a 3x3 conv with 16 filters, then three stages of n
    basic blocks with 16/32/64 filters on 32/16/8 maps, global average pooling
    and a dense layer; depth = 6n + 2.
v2: He et al., "Identity Mappings in Deep Residual Networks" (2016b): the same
    layout with BN-ReLU moved before each convolution (full pre-activation,
    Fig. 4e), a final BN-ReLU before pooling, and bottleneck blocks of
    1x1-3x3-1x1 convs with 4x expansion for depth = 9n + 2 (ResNet-164).

The downsampling shortcut is a 1x1 projection (option B) by default; option A
("zero_pad": subsample and pad channels with zeros, parameter-free) is what the
paper used for its CIFAR counts (ResNet-20: 0.27M) and is one config switch.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn.errors import UserError
from cnn.models.layers import ModuleDef, classifier_head, make_layers

SHORTCUTS = ("projection", "zero_pad")


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

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = self.act(self.norm()(y))
    y = self.norm()(self.conv(self.filters, (3, 3))(y))
    if x.shape != y.shape:
      x = Shortcut(self.filters, self.strides, self.shortcut, self.conv, self.norm)(x)
    return self.act(y + x)


class BasicBlockV2(nn.Module):
  """BN-ReLU-conv-BN-ReLU-conv, add the untouched shortcut (pre-activation)."""
  filters: int
  strides: int
  shortcut: str
  conv: ModuleDef
  norm: ModuleDef
  act: Callable

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    preact = self.act(self.norm()(x))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(preact)
    y = self.conv(self.filters, (3, 3))(self.act(self.norm()(y)))
    if x.shape != y.shape:
      x = Shortcut(self.filters, self.strides, self.shortcut, self.conv, None)(preact)
    return y + x


class BottleneckV2(nn.Module):
  """Pre-activation bottleneck: 1x1 reduce, 3x3, 1x1 expand to 4x filters."""
  filters: int
  strides: int
  shortcut: str
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    preact = self.act(self.norm()(x))
    y = self.conv(self.filters, (1, 1))(preact)
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(
        self.act(self.norm()(y)))
    y = self.conv(self.filters * self.expansion, (1, 1))(self.act(self.norm()(y)))
    if x.shape != y.shape:
      x = Shortcut(self.filters * self.expansion, self.strides, self.shortcut,
                   self.conv, None)(preact)
    return y + x


def blocks_per_stage(depth: int, block_cls: type) -> int:
  """n in depth = 6n+2 (basic) or 9n+2 (bottleneck)."""
  layers_per_block = 3 if block_cls is BottleneckV2 else 2
  n, rest = divmod(depth - 2, 3 * layers_per_block)
  if rest or n < 1:
    raise UserError(
        f"ResNet depth {depth} is not {3 * layers_per_block}n+2 for "
        f"{block_cls.__name__}; use e.g. {3 * layers_per_block * 3 + 2}")
  return n


class CifarResNet(nn.Module):
  """Three stages of residual blocks on 32x32 (or 28x28) inputs."""
  depth: int
  block_cls: type
  num_classes: int
  preactivation: bool
  widths: tuple[int, ...] = (16, 32, 64)
  shortcut: str = "projection"
  dtype: Any = jnp.float32
  norm_groups: int = 1  # > 1: per-device BatchNorm statistics (see layers.py)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    if self.shortcut not in SHORTCUTS:
      raise UserError(f"unknown shortcut {self.shortcut!r}; valid: {', '.join(SHORTCUTS)}")
    conv, norm, act = make_layers(train, self.dtype, self.norm_groups)
    n = blocks_per_stage(self.depth, self.block_cls)
    x = conv(self.widths[0], (3, 3), name="stem_conv")(x.astype(self.dtype))
    if not self.preactivation:
      x = act(norm(name="stem_bn")(x))
    for stage, width in enumerate(self.widths):
      for block in range(n):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(width, strides, self.shortcut, conv, norm, act,
                           name=f"stage{stage + 1}_block{block + 1}")(x)
    if self.preactivation:
      x = act(norm(name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return classifier_head(x, self.num_classes, self.dtype)


ResNetV1 = functools.partial(CifarResNet, block_cls=BasicBlockV1, preactivation=False)
ResNetV2 = functools.partial(CifarResNet, block_cls=BasicBlockV2, preactivation=True)
ResNetV2Bottleneck = functools.partial(
    CifarResNet, block_cls=BottleneckV2, preactivation=True)

MODELS = {
    **{f"resnet{d}_v1": functools.partial(ResNetV1, depth=d) for d in (8, 20, 32, 44, 56, 110)},
    **{f"resnet{d}_v2": functools.partial(ResNetV2, depth=d) for d in (8, 20, 32, 44, 56, 110)},
    "resnet164_v2": functools.partial(ResNetV2Bottleneck, depth=164),
}
