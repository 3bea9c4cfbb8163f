"""Wide ResNet WRN-16-4 on CIFAR-10, Zagoruyko & Komodakis (2016).

  python main.py --config=configs/wrn16_4_cifar10.py --workdir=runs/wrn16_4_cifar10

The paper's recipe (Sec. 3): SGD with Nesterov momentum 0.9, lr 0.1, weight
decay 5e-4, batch 128, 200 epochs, lr x 0.2 at epochs 60, 120 and 160;
pad-4 crop + flip, no dropout (`--config.model_kwargs.dropout_rate=0.3` adds
the paper's). Published: 5.02% error (94.98%) without dropout, 5.24% with
(the paper's dropout study, Sec. 3), with 2.7M parameters (2,748,890): better
than the 1.7M pre-activation ResNet-164 (5.46%) with 16 layers. About 2 h on
one GPU.
"""
from configs import _wide_resnet


def get_config():
  config = _wide_resnet.get_config()
  config.model = "wrn16_4"
  config.model_kwargs.dropout_rate = 0.0
  return config
