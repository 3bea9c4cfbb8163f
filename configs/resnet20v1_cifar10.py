"""ResNet-20 v1 (post-activation, option A) on CIFAR-10: He et al. (2016a), Table 6.

  python main.py --config=configs/resnet20v1_cifar10.py --workdir=runs/resnet20v1_cifar10
  python main.py --config=configs/resnet20v1_cifar10.py:validation --workdir=runs/r20v1_val

The paper's recipe, exactly (configs/_he2016.py lists it and the deviations
that remain): option-A shortcuts (0.27M parameters), Torch's symmetric
padding, SGD 0.1 / momentum 0.9 / wd 1e-4, batch 128, lr / 10 at 32k and
48k of 64k iterations, pad-4 crop + flip. Default protocol "paper": all 50k
training images, the final model's test accuracy. Published: 8.75% error =
91.25% (Table 6); 91.73% in a PyTorch re-implementation. Measured here:
91.33% (seed 0, final model; results/resnet20v1_cifar10_seed0.json, weights
in results/weights/) in 11.1 h on a 2-core CPU. About 0.3 h on one GPU.
"""
from configs import _he2016


def get_config(protocol: str = "paper"):
  return _he2016.get_config("resnet20_v1", protocol)
