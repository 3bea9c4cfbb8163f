"""The wide-ResNet CIFAR recipe shared by the WRN configs (not an experiment
itself): Zagoruyko & Komodakis (2016), Sec. 3: SGD with Nesterov momentum 0.9,
lr 0.1, weight decay 5e-4, batch 128, 200 epochs, lr x 0.2 at epochs 60, 120
and 160; pad-4 crop + flip. The authors' code (szagoruyko/wide-residual-
networks) initialises every block normally, so `zero_init_last` stays off,
and pads convolutions symmetrically (the model default)."""
from configs import default


def get_config():
  config = default.get_config()
  config.optim.nesterov = True
  config.optim.weight_decay = 5e-4
  config.num_epochs = 200
  config.schedule.boundaries = (0.3, 0.6, 0.8)  # epochs 60, 120, 160 of 200
  config.schedule.decay_factor = 0.2
  return config
