"""ResNet-164 v2 (pre-activation, bottleneck) on CIFAR-10: He et al. (2016b), Table 3.

  python main.py --config=configs/resnet164v2_cifar10.py --workdir=runs/resnet164v2_cifar10
  python main.py --config=configs/resnet164v2_cifar10.py:validation --workdir=runs/r164v2_val

The recipe of configs/_he2016.py (which lists the deviations that remain)
with the warm phase of the 2016b appendix (lr 0.01 for 400 iterations, then
0.1), on full pre-activation bottleneck units (1x1-3x3-1x1, 4x expansion,
18 per stage) with 1x1 projection shortcuts. Published: 5.46% error =
94.54% (Table 3). 1.7M parameters.
Default protocol "paper" (all 50k images, final model).
"""
from configs import _he2016


def get_config(protocol: str = "paper"):
  return _he2016.warm_phase(_he2016.get_config("resnet164_v2", protocol))
