"""Wide ResNet WRN-28-10 with dropout on CIFAR-10, Zagoruyko & Komodakis (2016).

  python main.py --config=configs/wrn28_10_cifar10.py --workdir=runs/wrn28_10_cifar10

The paper's recipe (Sec. 3): SGD with Nesterov momentum 0.9, lr 0.1, weight
decay 5e-4, batch 128, 200 epochs, lr x 0.2 at epochs 60, 120 and 160;
pad-4 crop + flip, dropout 0.3 between each block's convolutions. Published:
3.89% error (96.11%) with dropout, 4.00% without (Sec. 3). 36.5M parameters
(36,479,194), 5.2 GFLOPs per image: about a day on one V100-class GPU, not a
CPU job (`--config.model_kwargs.dropout_rate=0` for the no-dropout run).
"""
from configs import _wide_resnet


def get_config():
  config = _wide_resnet.get_config()
  config.model = "wrn28_10"
  config.model_kwargs.dropout_rate = 0.3
  return config
