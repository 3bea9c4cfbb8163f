"""Settings shared by the MNIST experiments (not an experiment itself):
55k train / 5k validation / 10k test, no flips (digits are not mirror-symmetric),
small random shifts."""
from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "mnist"
  config.data.train_split = "train[:55000]"
  config.data.validation_split = "train[55000:]"
  config.augment.geometry = "pad_crop"
  config.augment.crop_padding = 2
  config.optim.weight_decay = 5e-4
  config.schedule.name = "cosine"
  config.num_epochs = 30
  # Besides 2/255 and 8/255 (the comparison table's columns), MNIST's usual radii 0.1 and 0.3.
  config.robustness.attack_eps = (2, 8, 25.5, 76.5)
  return config
