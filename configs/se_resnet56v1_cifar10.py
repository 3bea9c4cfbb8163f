"""SE-ResNet-56 v1 on CIFAR-10: ResNet-56 with squeeze-and-excitation, Hu et al. (2018).

  python main.py --config=configs/se_resnet56v1_cifar10.py --workdir=runs/se_resnet56v1_cifar10

Exactly the recipe of configs/resnet56v1_cifar10.py (He et al.: SGD 0.1,
momentum 0.9, wd 1e-4, batch 128, 182 epochs, lr / 10 at 50% and 75%), so the
pair measures what SE (reduction r = 16, on every block's residual branch)
adds; Hu et al. also kept each baseline's recipe. Hu et al. report no
ResNet-56: on CIFAR-10 their ResNet-110 goes from 6.37% to 5.21% error and
pre-act ResNet-164 from 5.46% to 4.39% (Table 4); the same comparison here is
`--config.model=se_resnet110_v1` against `resnet110_v1`. SE costs little:
862,889 parameters against ResNet-56's 855,770 (+7,119, +0.8%).
`--config.model_kwargs.se_reduction=8` changes r; 0 switches SE off.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "se_resnet56_v1"
  config.model_kwargs.se_reduction = 16
  return config
