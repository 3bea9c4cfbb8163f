"""ResNeXt-29 for CIFAR (Xie, Girshick, Dollar, Tu & He, "Aggregated Residual
Transformations for Deep Neural Networks", CVPR 2017).

Section 5.3 and the authors' CIFAR code (facebookresearch/ResNeXt): a 3x3
conv with 64 filters + BN-ReLU, three stages of 3 bottleneck blocks whose
outputs are 256/512/1024 channels on 32/16/8 maps (29 = 9 * 3 + 2 layers),
global average pooling and a dense layer. Each block is ResNet's
post-activation bottleneck with its 3x3 split into C groups ("cardinality")
of d channels at the first stage, doubling per stage (Fig. 3c); shortcuts are
1x1 projections + BN where the shape changes (option B). The paper's claim:
at equal parameters, more groups beat more width (Fig. 7, Table 7);
ResNeXt-29 8x64d has 34.4M parameters and 3.65% CIFAR-10 error, 16x64d 68.1M
and 3.58%, against the 4.17% that Table 7 quotes for the 36.5M WRN-28-10.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from cnn.errors import UserError
from cnn.models.blocks import BottleneckV1, residual_stages
from cnn.models.layers import LayerSpec, classifier_head, norm_act


class ResNeXt(nn.Module):
  """ResNeXt-`depth` (C x d), for 32x32 (or 28x28) inputs."""
  cardinality: int
  bottleneck_width: int
  num_classes: int
  depth: int = 29
  se_reduction: int = 0  # > 0: squeeze-and-excitation with this reduction ratio
  zero_init_last: bool = False  # blocks start as the identity (blocks.last_norm/last_conv)
  spec: LayerSpec = LayerSpec()  # how the layers compute (layers.py), not architecture

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    n, rest = divmod(self.depth - 2, 9)
    if rest or n < 1:
      raise UserError(f"ResNeXt depth {self.depth} is not 9n+2; use e.g. 29")
    conv, norm, act = self.spec.layers(train)
    x = conv(64, (3, 3), name="stem_conv")(x.astype(self.spec.dtype))
    x = norm_act(norm, act, x, name="stem_bn")
    block = functools.partial(
        BottleneckV1, shortcut="projection", conv=conv, norm=norm, act=act,
        cardinality=self.cardinality, base_width=self.bottleneck_width,
        se_reduction=self.se_reduction, zero_init_last=self.zero_init_last)
    x = residual_stages(x, block, (64, 128, 256), n, self.spec.barrier)
    x = jnp.mean(x, axis=(1, 2))
    return classifier_head(x, self.num_classes, self.spec.dtype)


MODELS = {
    f"resnext29_{c}x{d}d": functools.partial(ResNeXt, cardinality=c, bottleneck_width=d)
    for c, d in ((2, 32), (8, 64), (16, 64))
}
