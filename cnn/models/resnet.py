"""CIFAR ResNets: v1 post-activation and v2 pre-activation, optionally SE.

v1: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition"
    (2016), Section 4.2: a 3x3 conv with 16 filters, then three stages of n
    basic blocks with 16/32/64 filters on 32/16/8 maps, global average pooling
    and a dense layer; depth = 6n + 2.
v2: He et al., "Identity Mappings in Deep Residual Networks" (2016b): the same
    layout with BN-ReLU moved before each convolution (full pre-activation,
    Fig. 4e), a final BN-ReLU before pooling, and bottleneck blocks of
    1x1-3x3-1x1 convs with 4x expansion for depth = 9n + 2 (ResNet-164).
SE: Hu, Shen & Sun, "Squeeze-and-Excitation Networks" (2018): `se_reduction`
    = r > 0 puts an SE module (reduction r, the paper's 16 by default in the
    `se_resnet*` names) on every block's residual branch; Table 4 of the
    paper reports ResNet-110 on CIFAR-10 going from 6.37% to 5.21% error.
    Switch it on with `--config.model=se_resnet56_v1` from any ResNet config,
    or `config.model_kwargs.se_reduction = 16` in a config file (the command
    line can only override keys the config has: configs/se_resnet56v1_cifar10.py
    sets it, so `--config.model_kwargs.se_reduction=8` works there).

The downsampling shortcut is a 1x1 projection (option B) by default; option A
("zero_pad": subsample and pad channels with zeros, parameter-free) is what the
paper used for its CIFAR counts (ResNet-20: 0.27M) and is one config switch.
The blocks live in blocks.py, shared with the wide ResNets and ResNeXt.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from cnn.errors import UserError
from cnn.models.blocks import (  # pylint: disable=unused-import (re-exported)
    SHORTCUTS, BasicBlockV1, BasicBlockV2, BottleneckV2, Shortcut, residual_stages,
    zero_pad_shortcut)
from cnn.models.layers import LayerSpec, classifier_head, norm_act


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
  se_reduction: int = 0  # > 0: squeeze-and-excitation with this reduction ratio
  zero_init_last: bool = False  # blocks start as the identity (blocks.last_norm/last_conv)
  spec: LayerSpec = LayerSpec()  # how the layers compute (layers.py), not architecture

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    if self.shortcut not in SHORTCUTS:
      raise UserError(f"unknown shortcut {self.shortcut!r}; valid: {', '.join(SHORTCUTS)}")
    conv, norm, act = self.spec.layers(train)
    n = blocks_per_stage(self.depth, self.block_cls)
    x = conv(self.widths[0], (3, 3), name="stem_conv")(x.astype(self.spec.dtype))
    if not self.preactivation:
      x = norm_act(norm, act, x, name="stem_bn")
    block = functools.partial(self.block_cls, shortcut=self.shortcut, conv=conv, norm=norm,
                              act=act, se_reduction=self.se_reduction,
                              zero_init_last=self.zero_init_last)
    x = residual_stages(x, block, self.widths, n, self.spec.barrier)
    if self.preactivation:
      x = norm_act(norm, act, x, name="final_bn")
    x = jnp.mean(x, axis=(1, 2))
    return classifier_head(x, self.num_classes, self.spec.dtype)


ResNetV1 = functools.partial(CifarResNet, block_cls=BasicBlockV1, preactivation=False)
ResNetV2 = functools.partial(CifarResNet, block_cls=BasicBlockV2, preactivation=True)
ResNetV2Bottleneck = functools.partial(
    CifarResNet, block_cls=BottleneckV2, preactivation=True)

DEPTHS = (8, 20, 32, 44, 56, 110)
# Hu et al. (Table 4) report ResNet-110 (v1) and ResNet-164 (v2); 20 and 56 are
# the cheap ones. Any other depth: `se_reduction=16` in config.model_kwargs.
SE_DEPTHS = {"v1": (20, 56, 110), "v2": (20, 56)}
MODELS = {
    **{f"resnet{d}_v1": functools.partial(ResNetV1, depth=d) for d in DEPTHS},
    **{f"resnet{d}_v2": functools.partial(ResNetV2, depth=d) for d in DEPTHS},
    "resnet164_v2": functools.partial(ResNetV2Bottleneck, depth=164),
    **{f"se_resnet{d}_v1": functools.partial(ResNetV1, depth=d, se_reduction=16)
       for d in SE_DEPTHS["v1"]},
    **{f"se_resnet{d}_v2": functools.partial(ResNetV2, depth=d, se_reduction=16)
       for d in SE_DEPTHS["v2"]},
    "se_resnet164_v2": functools.partial(ResNetV2Bottleneck, depth=164, se_reduction=16),
}
