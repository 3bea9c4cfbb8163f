"""VGG with BatchNorm for 28x28 and 32x32 inputs.

Simonyan & Zisserman (2015), Table 1, with BatchNorm after every convolution
(Ioffe & Szegedy 2015) and the small dropout classifier used for CIFAR-10
(Liu & Deng 2015): the convolutional part has exactly the paper's widths, so
its weights match the paper's conv layers; the 4096-wide ImageNet classifier is
replaced by `classifier_widths`.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn.models.layers import LayerSpec, classifier_head, norm_act

# "M" is a 2x2 max-pool. Column A, B, D, E of the paper's Table 1.
VGG_LAYERS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512,
         512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
  """VGG-BN. Pooling uses SAME padding so 28x28 MNIST shrinks 28-14-7-4-2-1."""
  layers: Sequence[Any]
  num_classes: int
  classifier_widths: Sequence[int] = (512, 512)
  dropout_rate: float = 0.5
  spec: LayerSpec = LayerSpec()  # how the layers compute (layers.py), not architecture

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    conv, norm, act = self.spec.layers(train)
    x = x.astype(self.spec.dtype)
    for width in self.layers:
      if width == "M":
        x = self.spec.pool(x, (2, 2), (2, 2), "SAME")
      else:
        x = norm_act(norm, act, conv(width, (3, 3))(x))
    x = x.reshape((x.shape[0], -1))
    for width in self.classifier_widths:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = act(nn.Dense(width, dtype=self.spec.dtype)(x))
    return classifier_head(x, self.num_classes, self.spec.dtype)


MODELS = {f"vgg{depth}": functools.partial(VGG, layers=layers)
          for depth, layers in VGG_LAYERS.items()}
