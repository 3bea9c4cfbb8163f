"""A tiny real-data CIFAR-10 run for tests, exports and a first look: ResNet-8
on 2048 training images, 2 epochs, evaluated with test-time flips on all
10,000 test images.

  python main.py --config=configs/tiny_cifar10.py --workdir=/tmp/tiny_cifar

About a minute on a 2-core CPU; expect roughly 25-30% test accuracy (it is a
smoke run, not an experiment).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet8_v1"
  config.data.train_split = "train[:2048]"
  config.data.validation_split = "train[49000:50000]"
  config.batch_size = 64
  config.eval.batch_size = 1000
  config.num_epochs = 2
  # --mode=evaluate: calibration only (seconds); see tests/test_robustness.py for the rest.
  config.robustness.sections = "calibration"
  config.eval.flip = True
  config.log.every_steps = 8
  return config
