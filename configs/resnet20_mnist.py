"""Pre-activation ResNet-20 on MNIST.

  python main.py --config=configs/resnet20_mnist.py --workdir=runs/resnet20_mnist

SGD 0.1, momentum 0.9, wd 5e-4, batch 128, cosine over 30 epochs, +-2 pixel
shifts. Published: 99.6% (pre-act ResNet-20). One epoch
(`--config.num_epochs=1`) takes a few minutes on a 2-core CPU and reaches ~99%.
"""
from configs import _mnist as mnist


def get_config():
  config = mnist.get_config()
  config.model = "resnet20_v2"
  return config
