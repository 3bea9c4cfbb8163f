"""ResNet-110 v1 (post-activation) on CIFAR-10, He et al. recipe.

  python main.py --config=configs/resnet110v1_cifar10.py --workdir=runs/resnet110v1_cifar10

The ResNet-20 recipe (SGD 0.1, momentum 0.9, wd 1e-4, batch 128, 182 epochs,
lr / 10 at 50% and 75%, pad-4-crop-flip) plus what He et al. did for the
110-layer net: start gently. They trained at lr 0.01 until the training error
fell below 80% (about 400 iterations), then 0.1; here the rate rises linearly
from 0 to 0.1 over the first epoch (351 iterations). Published: 93.57% (He et al. 2016, best of 5: 93.57, mean 93.39).
1.7M parameters.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet110_v1"
  config.warmup_epochs = 1.0
  return config
