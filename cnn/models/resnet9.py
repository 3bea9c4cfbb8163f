"""ResNet-9 of the DAWNBench CIFAR-10 speedruns (Page 2018, "How to train your
ResNet", the Myrtle.ai network): 94% test accuracy in 24 epochs.

prep conv 64 -> layer1: conv 128, max-pool, residual of two convs 128 ->
layer2: conv 256, max-pool -> layer3: conv 512, max-pool, residual of two
convs 512 -> global max-pool -> linear 10 without bias, logits scaled by 1/8.
Every conv is 3x3 conv-BN-ReLU (`blocks.ConvNormAct`); 6,573,120 parameters.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from cnn.models.blocks import ConvNormAct
from cnn.models.layers import LayerSpec


class ResNet9(nn.Module):
  num_classes: int
  widths: tuple[int, int, int, int] = (64, 128, 256, 512)
  logit_scale: float = 0.125  # Page's output multiplier: keeps early softmax soft
  spec: LayerSpec = LayerSpec()  # how the layers compute (layers.py), not architecture

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    conv, norm, act = self.spec.layers(train)
    unit = functools.partial(ConvNormAct, conv=conv, norm=norm, act=act)
    pool = functools.partial(self.spec.pool, window_shape=(2, 2), strides=(2, 2), padding="SAME")
    prep, w1, w2, w3 = self.widths
    x = unit(prep, name="prep")(x.astype(self.spec.dtype))
    for i, (width, residual) in enumerate(((w1, True), (w2, False), (w3, True)), start=1):
      x = pool(unit(width, name=f"layer{i}")(x))
      if residual:
        x = x + unit(width, name=f"layer{i}_res2")(unit(width, name=f"layer{i}_res1")(x))
    x = jnp.max(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.spec.dtype, name="head")(x)
    return logits.astype(jnp.float32) * self.logit_scale


MODELS = {"resnet9": ResNet9}
