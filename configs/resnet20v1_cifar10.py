"""ResNet-20 v1 (post-activation) on CIFAR-10, He et al. (2016) recipe.

  python main.py --config=configs/resnet20v1_cifar10.py --workdir=runs/resnet20v1_cifar10

SGD 0.1, momentum 0.9, weight decay 1e-4, batch 128, 182 epochs on 45k images
(64k iterations), lr / 10 at 50% and 75%; pad-4 crop + flip. Published: 91.25%
(He et al., option A), 91.73% (re-implementation). About 0.3 h on one GPU.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet20_v1"
  return config
