"""ResNet-56 v2 (pre-activation) on CIFAR-10, He et al. (2016) recipe.

  python main.py --config=configs/resnet56v2_cifar10.py --workdir=runs/resnet56v2_cifar10

Same recipe as ResNet-20 (SGD 0.1, momentum 0.9, wd 1e-4, batch 128, 182
epochs, lr / 10 at 50% and 75%). Pre-activation (He et al. 2016b); published about 93.0%
(seed: 87.51%). 0.85M parameters.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet56_v2"
  return config
