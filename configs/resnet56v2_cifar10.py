"""ResNet-56 v2 (pre-activation) on CIFAR-10: He et al. (2016b)'s unit on the
2016a CIFAR layout.

  python main.py --config=configs/resnet56v2_cifar10.py --workdir=runs/resnet56v2_cifar10
  python main.py --config=configs/resnet56v2_cifar10.py:validation --workdir=runs/r56v2_val

The recipe of configs/_he2016.py (which lists the deviations that remain):
full pre-activation units, 1x1 projection shortcuts on the pre-activated
input, Torch's symmetric padding, the 2016b appendix's warm phase for every
CIFAR net (lr 0.01 for 400 iterations, then 0.1), SGD 0.1 / momentum 0.9 /
wd 1e-4, batch 128, lr / 10 at 32k and 48k of 64k iterations. He et al. (2016b) report no
ResNet-56 v2; re-implementations report about 93.0-93.5%. 0.85M parameters.
Default protocol "paper" (all 50k images, final model).
"""
from configs import _he2016


def get_config(protocol: str = "paper"):
  return _he2016.warm_phase(_he2016.get_config("resnet56_v2", protocol))
