"""ResNet-32 v1 (post-activation, option A) on CIFAR-10: He et al. (2016a), Table 6.

  python main.py --config=configs/resnet32v1_cifar10.py --workdir=runs/resnet32v1_cifar10
  python main.py --config=configs/resnet32v1_cifar10.py:validation --workdir=runs/r32v1_val

The recipe of configs/_he2016.py (which lists the deviations that remain):
option-A shortcuts (0.46M parameters), Torch's symmetric padding, SGD 0.1 /
momentum 0.9 / wd 1e-4, batch 128, lr / 10 at 32k and 48k of 64k
iterations, pad-4 crop + flip. Published: 7.51% error = 92.49% (Table 6).
Default protocol "paper" (all 50k images, final model). Not measured here
yet (the rows issue's He et al. table: n >= 3 seeds, with
--config.sweep.seeds=0-2).
"""
from configs import _he2016


def get_config(protocol: str = "paper"):
  return _he2016.get_config("resnet32_v1", protocol)
