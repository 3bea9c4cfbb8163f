"""ResNet-110 v2 (pre-activation) on CIFAR-10, He et al. recipe.

  python main.py --config=configs/resnet110v2_cifar10.py --workdir=runs/resnet110v2_cifar10

The recipe of configs/resnet110v1_cifar10.py (the ResNet-20 recipe with a
1-epoch warmup), on the pre-activation net. Published: 93.63% (He et al.
2016b). 1.7M parameters.
"""
from configs import resnet110v1_cifar10


def get_config():
  config = resnet110v1_cifar10.get_config()
  config.model = "resnet110_v2"
  return config
