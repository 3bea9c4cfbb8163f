"""The small Inception network for CIFAR-10 of Zhang, Bengio, Hardt, Recht &
Vinyals, "Understanding deep learning requires rethinking generalization"
(ICLR 2017), Appendix A, Fig. 3.

Built from three modules, each conv being conv-BN-ReLU:
- Inception(c1, c3): a 1x1 conv with c1 filters and a 3x3 with c3 in
  parallel, outputs concatenated (Szegedy et al. 2015's idea, two branches);
- Downsample(c3): a stride-2 3x3 conv with c3 filters and a stride-2 3x3 max
  pool in parallel, concatenated;
- the network: 3x3 conv 96, Inception(32,32), Inception(32,48),
  Downsample(80), Inception(112,48), Inception(96,64), Inception(80,80),
  Inception(48,96), Downsample(96), Inception(176,160), Inception(176,160),
  mean pooling over the final map, dense layer.
The paper feeds 28x28 crops (28-14-7) and counts 1,649,402 parameters
(Table 1); on 32x32 inputs the maps are 32-16-8 and the count is unchanged.
It is the paper's workhorse because it fits even random labels yet
generalises (89.05% test accuracy with crops and weight decay, Table 1).
"""
import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn.models.blocks import ConvNormAct
from cnn.models.layers import LayerSpec, classifier_head, norm_act

# ("inception", c1, c3) or ("downsample", c3), in order (Fig. 3).
INCEPTION_SMALL = (
    ("inception", 32, 32), ("inception", 32, 48), ("downsample", 80),
    ("inception", 112, 48), ("inception", 96, 64), ("inception", 80, 80),
    ("inception", 48, 96), ("downsample", 96),
    ("inception", 176, 160), ("inception", 176, 160),
)


class InceptionModule(nn.Module):
  """1x1 and 3x3 conv-BN-ReLU branches, concatenated along channels."""
  ch1: int
  ch3: int
  unit: Callable[..., nn.Module]  # ConvNormAct with the layers' factories

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return jnp.concatenate([self.unit(self.ch1, (1, 1), name="branch1x1")(x),
                            self.unit(self.ch3, (3, 3), name="branch3x3")(x)], axis=-1)


class DownsampleModule(nn.Module):
  """Stride-2 3x3 conv-BN-ReLU and stride-2 3x3 max pool, concatenated."""
  ch3: int
  unit: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    pooled = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    return jnp.concatenate([self.unit(self.ch3, (3, 3), strides=2, name="branch3x3")(x),
                            pooled], axis=-1)


class InceptionSmall(nn.Module):
  """Zhang et al.'s CIFAR Inception; `layout` lists its modules."""
  num_classes: int
  layout: tuple = INCEPTION_SMALL
  stem_width: int = 96
  spec: LayerSpec = LayerSpec()  # how the layers compute (layers.py), not architecture

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    conv, norm, act = self.spec.layers(train)
    unit = functools.partial(ConvNormAct, conv=conv, norm=norm, act=act)
    x = conv(self.stem_width, (3, 3), name="stem_conv")(x.astype(self.spec.dtype))
    x = norm_act(norm, act, x, name="stem_bn")
    for i, (kind, *widths) in enumerate(self.layout):
      module = InceptionModule if kind == "inception" else DownsampleModule
      x = module(*widths, unit, name=f"block{i + 1}_{kind}")(x)
    x = jnp.mean(x, axis=(1, 2))
    return classifier_head(x, self.num_classes, self.spec.dtype)


MODELS = {"inception_small": InceptionSmall}
