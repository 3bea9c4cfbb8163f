"""ResNet-110 v1 (post-activation, option A) on CIFAR-10: He et al. (2016a), Table 6.

  python main.py --config=configs/resnet110v1_cifar10.py --workdir=runs/resnet110v1_cifar10
  python main.py --config=configs/resnet110v1_cifar10.py:validation --workdir=runs/r110v1_val

The recipe of configs/_he2016.py (which lists the deviations that remain)
plus the paper's warm phase for this depth (Sec. 4.2): lr 0.01 for 400
iterations, then 0.1 (the paper: "until the training error is below 80%
(about 400 iterations)"; a fixed count keeps the run reproducible).
Option-A shortcuts, 1.7M parameters. Published: 6.43% error = 93.57% (best
of 5 runs; mean 6.61 +- 0.16% = 93.39%), Table 6.
Default protocol "paper" (all 50k images, final model).
"""
from configs import _he2016


def get_config(protocol: str = "paper"):
  return _he2016.warm_phase(_he2016.get_config("resnet110_v1", protocol))
