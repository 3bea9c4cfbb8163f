"""ResNet-20 v1 on CIFAR-10, short schedule: 30 epochs of cosine decay.

  python main.py --config=configs/resnet20v1_cifar10_30ep.py --workdir=runs/resnet20v1_cifar10_30ep

The check a CPU can afford (about 2 h on 2 cores): the He et al. model and
augmentation, SGD 0.1 with momentum 0.9, batch 128, 1 warmup epoch then
cosine to 0 over 30 epochs, weight decay 5e-4 (stronger than the 182-epoch
recipe's 1e-4, which suits short schedules). Target: at least 88% test
accuracy; the full recipe (configs/resnet20v1_cifar10.py) is the one
compared with the published 91.25%. Measured (seed 0, 2-core CPU, 1.95 h):
89.65% test accuracy at the best-by-validation epoch 28 (validation 91.10%),
89.84% after epoch 30 (results/resnet20v1_cifar10_30ep_seed0.json).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet20_v1"
  config.schedule.name = "cosine"
  config.schedule.warmup_epochs = 1.0
  config.optim.weight_decay = 5e-4
  config.num_epochs = 30
  return config
