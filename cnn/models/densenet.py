"""DenseNet and DenseNet-BC for CIFAR (Huang, Liu, van der Maaten & Weinberger,
"Densely Connected Convolutional Networks", CVPR 2017).

Section 3: inside a dense block every layer sees the concatenation of all
earlier feature maps and adds k ("growth rate") new ones, so features are
reused instead of relearned and the network stays narrow. Each layer is the
pre-activation unit BN-ReLU-conv; "B" puts a BN-ReLU-1x1 conv to 4k channels
before the 3x3 (bottleneck), "C" makes the transitions between blocks
(BN-ReLU-1x1 conv, 2x2 average pool) keep only a fraction theta = 0.5 of the
channels (compression). For CIFAR: a 3x3 stem conv with 2k filters (16
without BC), three dense blocks of (L - 4) / 6 bottleneck layers ((L - 4) / 3
plain ones) on 32/16/8 maps, BN-ReLU, global average pooling and a dense
layer. DenseNet-BC with L = 100, k = 12 has 0.8M parameters and 4.51% error
on augmented CIFAR-10 (Table 2), matching the 1.7M pre-act ResNet-164 (5.46%)
with half its parameters.

Dropout (rate 0.2 after every conv but the stem) is what the paper used
without data augmentation; with augmentation it used none, hence the default.
"""
import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn.errors import UserError
from cnn.models.blocks import ModuleDef, NormActConv, make_dropout
from cnn.models.layers import LayerSpec, classifier_head, norm_act


class DenseLayer(nn.Module):
  """[BN-ReLU-1x1 conv to 4k] BN-ReLU-3x3 conv to k, concatenated to the input."""
  growth_rate: int
  bottleneck: bool
  unit: Callable[..., nn.Module]  # NormActConv with the layers' factories
  dropout: ModuleDef | None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = x
    if self.bottleneck:
      y = self.unit(4 * self.growth_rate, (1, 1), name="bottleneck")(y)
      y = y if self.dropout is None else self.dropout()(y)
    y = self.unit(self.growth_rate, (3, 3), name="conv3x3")(y)
    y = y if self.dropout is None else self.dropout()(y)
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  """BN-ReLU-1x1 conv to `features`, 2x2 average pooling."""
  features: int
  unit: Callable[..., nn.Module]
  dropout: ModuleDef | None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = self.unit(self.features, (1, 1), name="conv1x1")(x)
    x = x if self.dropout is None else self.dropout()(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """DenseNet(-BC)-`depth`-k for 32x32 (or 28x28: 28-14-7) inputs."""
  depth: int
  growth_rate: int
  num_classes: int
  bottleneck: bool = True
  compression: float = 0.5
  dropout_rate: float = 0.0
  spec: LayerSpec = LayerSpec()  # how the layers compute (layers.py), not architecture

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    convs_per_layer = 2 if self.bottleneck else 1
    n, rest = divmod(self.depth - 4, 3 * convs_per_layer)
    if rest or n < 1:
      raise UserError(f"DenseNet depth {self.depth} is not {3 * convs_per_layer}n+4; "
                      f"use e.g. {3 * convs_per_layer * 16 + 4}")
    conv, norm, act = self.spec.layers(train)
    unit = functools.partial(NormActConv, conv=conv, norm=norm, act=act)
    dropout = make_dropout(self.dropout_rate, train)
    bc = self.bottleneck and self.compression < 1
    x = conv(2 * self.growth_rate if bc else 16, (3, 3), name="stem_conv")(
        x.astype(self.spec.dtype))
    for b in range(3):
      for i in range(n):
        x = DenseLayer(self.growth_rate, self.bottleneck, unit, dropout,
                       name=f"block{b + 1}_layer{i + 1}")(x)
      if b < 2:
        x = Transition(int(self.compression * x.shape[-1]), unit, dropout,
                       name=f"transition{b + 1}")(x)
    x = norm_act(norm, act, x, name="final_bn")
    x = jnp.mean(x, axis=(1, 2))
    return classifier_head(x, self.num_classes, self.spec.dtype)


MODELS = {
    "densenet40_k12": functools.partial(
        DenseNet, depth=40, growth_rate=12, bottleneck=False, compression=1.0),
    "densenet_bc100_k12": functools.partial(DenseNet, depth=100, growth_rate=12),
}
