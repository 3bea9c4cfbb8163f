"""VGG-16 with BatchNorm on CIFAR-10.

  python main.py --config=configs/vgg16_cifar10.py --workdir=runs/vgg16_cifar10

Conv layers of Simonyan & Zisserman (2015) with BN, a 512-512 dropout
classifier; SGD 0.05, momentum 0.9, wd 5e-4, batch 128, cosine over 200
epochs, pad-4 crop + flip. Published VGG16-BN on CIFAR-10: 92.6-93.6%.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "vgg16"
  config.learning_rate = 0.05
  config.optim.weight_decay = 5e-4
  config.schedule.name = "cosine"
  config.num_epochs = 200
  return config
