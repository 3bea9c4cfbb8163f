"""Wide residual networks, WRN-d-k (Zagoruyko & Komodakis, "Wide Residual
Networks", BMVC 2016).

Section 2 and Table 1: the pre-activation CIFAR ResNet (He et al. 2016b) with
a 16-filter 3x3 stem and three stages of N = (d - 4) / 6 basic blocks whose
widths are multiplied by k: 16k, 32k, 64k on 32/16/8 maps, then BN-ReLU,
global average pooling and a dense layer. The paper's point is that width,
not depth, buys accuracy per unit of training time: WRN-16-4 (2.7M) beats the
1001-layer pre-act ResNet's error rate with 16 layers, WRN-28-10 (36.5M) gets
4.00% on CIFAR-10 (3.89% with dropout). Shortcuts are 1x1 projections of the
pre-activated input where the width changes (including the first block, 16
-> 16k), as in the authors' code; d counts every convolution: the stem, two
per block and the three projections, hence d = 6N + 4.

Dropout between a block's convolutions (Sec. 2.4, Fig. 1d; 0.3 on CIFAR) is
`dropout_rate`; SE (Hu et al. 2018) is `se_reduction`, as on every ResNet.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from cnn.errors import UserError
from cnn.models.blocks import BasicBlockV2, make_dropout, residual_stages
from cnn.models.layers import LayerSpec, classifier_head, norm_act


class WideResNet(nn.Module):
  """WRN-`depth`-`widen_factor` for 32x32 (or 28x28) inputs."""
  depth: int
  widen_factor: int
  num_classes: int
  dropout_rate: float = 0.0
  se_reduction: int = 0  # > 0: squeeze-and-excitation with this reduction ratio
  zero_init_last: bool = False  # blocks start as the identity (blocks.last_norm/last_conv)
  spec: LayerSpec = LayerSpec()  # how the layers compute (layers.py), not architecture

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    n, rest = divmod(self.depth - 4, 6)
    if rest or n < 1:
      raise UserError(f"wide ResNet depth {self.depth} is not 6N+4; use e.g. 16, 22, 28 or 40")
    conv, norm, act = self.spec.layers(train)
    x = conv(16, (3, 3), name="stem_conv")(x.astype(self.spec.dtype))
    block = functools.partial(
        BasicBlockV2, shortcut="projection", conv=conv, norm=norm, act=act,
        se_reduction=self.se_reduction, dropout=make_dropout(self.dropout_rate, train),
        zero_init_last=self.zero_init_last)
    widths = tuple(w * self.widen_factor for w in (16, 32, 64))
    x = residual_stages(x, block, widths, n, self.spec.barrier)
    x = norm_act(norm, act, x, name="final_bn")
    x = jnp.mean(x, axis=(1, 2))
    return classifier_head(x, self.num_classes, self.spec.dtype)


MODELS = {
    "wrn16_4": functools.partial(WideResNet, depth=16, widen_factor=4),
    "wrn16_8": functools.partial(WideResNet, depth=16, widen_factor=8),
    "wrn28_10": functools.partial(WideResNet, depth=28, widen_factor=10),
    "wrn40_4": functools.partial(WideResNet, depth=40, widen_factor=4),
}
