"""MobileNet v1 for 32x32 inputs (Howard et al., "MobileNets: Efficient
Convolutional Neural Networks for Mobile Vision Applications", 2017).

Section 3.1: a standard 3x3 conv is factorised into a depthwise 3x3 conv (one
filter per input channel) and a pointwise 1x1 conv, each followed by BN-ReLU
(Fig. 3), which costs 1/N + 1/9 of the multiply-adds of the full conv: most
parameters end up in the 1x1 convs. Table 1's body is kept exactly: a 3x3
conv with 32 filters, 13 depthwise-separable blocks widening to 1024, global
average pooling and a dense layer; `width_multiplier` is alpha (Sec. 3.3).

CIFAR adaptation: the ImageNet model downsamples 32x (224 -> 7); on 32x32 its
stride-2 stem is made stride 1 so the four stride-2 blocks give 32-16-8-4-2
(28-14-7-4-2 on MNIST). Strides carry no parameters, so at alpha = 1 the
network has exactly the paper's 4.2M (Table 8: 4,231,976) minus its
1000-way classifier (1024 * 1000 + 1000) plus a 10-way one (1024 * 10 + 10):
3,217,226. The paper reports no CIFAR result.
"""
import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn.models.blocks import ConvNormAct
from cnn.models.layers import LayerSpec, classifier_head, norm_act

# (output channels, stride) of the 13 depthwise-separable blocks (Table 1).
MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                *((512, 1),) * 5, (1024, 2), (1024, 1))


class DepthwiseSeparable(nn.Module):
  """Depthwise 3x3 conv-BN-ReLU, then pointwise 1x1 conv-BN-ReLU (Fig. 3)."""
  features: int
  strides: int
  unit: Callable[..., nn.Module]  # ConvNormAct with the layers' factories

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    x = self.unit(channels, (3, 3), strides=self.strides, groups=channels,
                  name="depthwise")(x)
    return self.unit(self.features, (1, 1), name="pointwise")(x)


class MobileNetV1(nn.Module):
  """MobileNet v1 with width multiplier alpha and a stride-1 stem."""
  num_classes: int
  width_multiplier: float = 1.0
  stem_strides: int = 1  # 2 on 224x224 ImageNet
  spec: LayerSpec = LayerSpec()  # how the layers compute (layers.py), not architecture

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    conv, norm, act = self.spec.layers(train)
    unit = functools.partial(ConvNormAct, conv=conv, norm=norm, act=act)
    width = lambda c: max(1, int(c * self.width_multiplier))
    x = conv(width(32), (3, 3), (self.stem_strides,) * 2, name="stem_conv")(
        x.astype(self.spec.dtype))
    x = norm_act(norm, act, x, name="stem_bn")
    for i, (features, strides) in enumerate(MOBILENET_V1):
      x = DepthwiseSeparable(width(features), strides, unit, name=f"block{i + 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    return classifier_head(x, self.num_classes, self.spec.dtype)


MODELS = {"mobilenet_v1": MobileNetV1}
