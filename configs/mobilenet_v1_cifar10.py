"""MobileNet v1 (width 1.0) on CIFAR-10, Howard et al. (2017), with a stride-1 stem.

  python main.py --config=configs/mobilenet_v1_cifar10.py --workdir=runs/mobilenet_v1_cifar10

Howard et al. report no CIFAR-10 result (their ImageNet recipe is RMSprop
with asynchronous updates and little or no weight decay on the depthwise
filters), so this recipe is ours: SGD momentum 0.9, lr 0.1, weight decay 1e-4
(a compromise: this optimiser decays every weight alike), batch 128, cosine
over 200 epochs, pad-4 crop + flip. 3,217,226 parameters: the paper's 4.2M
(Table 8) minus its 1000-way classifier. Re-implementations commonly report
roughly 90-92% with recipes like this one; treat that as a target, not a
published number. `--config.model_kwargs.width_multiplier=0.5` is alpha.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "mobilenet_v1"
  config.model_kwargs.width_multiplier = 1.0
  config.schedule.name = "cosine"
  config.num_epochs = 200
  return config
