"""ResNet-110 v2 (pre-activation) on CIFAR-10: He et al. (2016b), Table 3.

  python main.py --config=configs/resnet110v2_cifar10.py --workdir=runs/resnet110v2_cifar10
  python main.py --config=configs/resnet110v2_cifar10.py:validation --workdir=runs/r110v2_val

The recipe of configs/_he2016.py (which lists the deviations that remain)
with the 110-layer warm phase of configs/resnet110v1_cifar10.py (lr 0.01 for
400 iterations, then 0.1; the 2016b appendix uses it for every CIFAR net), on full
pre-activation units with 1x1 projection shortcuts. Published: 6.37% error
= 93.63% (Table 3, median of 5 runs). 1.7M parameters.
Default protocol "paper" (all 50k images, final model).
"""
from configs import _he2016


def get_config(protocol: str = "paper"):
  return _he2016.warm_phase(_he2016.get_config("resnet110_v2", protocol))
