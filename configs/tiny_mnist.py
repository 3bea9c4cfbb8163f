"""A tiny real-data run for tests and a first look: ResNet-8 on 2048 MNIST
training images, 2 epochs, evaluated on all 10,000 test images.

  python main.py --config=configs/tiny_mnist.py --workdir=/tmp/tiny

About half a minute on a 2-core CPU. Measured (seed 0, 2026-12-02, 2-core AMD EPYC): 75.2%
test accuracy; it is a smoke run, not a result (configs/resnet20_mnist.py reaches 99%).
"""
from configs import _mnist as mnist


def get_config():
  config = mnist.get_config()
  config.model = "resnet8_v1"
  config.data.train_split = "train[:2048]"
  config.data.validation_split = "train[55000:56000]"
  config.batch_size = 64
  config.eval.batch_size = 1000
  config.num_epochs = 2
  # --mode=evaluate: calibration only (seconds); see tests/test_robustness.py for the rest.
  config.robustness.sections = "calibration"
  config.log.every_steps = 8
  return config
