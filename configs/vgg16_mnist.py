"""VGG-16 with BatchNorm on MNIST (28x28 inputs pool down to 1x1).

  python main.py --config=configs/vgg16_mnist.py --workdir=runs/vgg16_mnist

SGD 0.05, momentum 0.9, wd 5e-4, batch 128, cosine over 30 epochs, +-2 pixel
shifts. Target: >= 99.6%. (The seed used Adam with reduce-on-plateau:
`--config.optim.name=adam --config.learning_rate=1e-3 --config.schedule.name=plateau`.)
"""
from configs import _mnist as mnist


def get_config():
  config = mnist.get_config()
  config.model = "vgg16"
  config.learning_rate = 0.05
  return config
