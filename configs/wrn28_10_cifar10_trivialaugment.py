"""WRN-28-10 on CIFAR-10 with TrivialAugment (wide) and Cutout: the strongest
published recipe the augmentation toolbox reproduces.

  python main.py --config=configs/wrn28_10_cifar10_trivialaugment.py --workdir=runs/wrn28_10_ta

Müller & Hutter (2021), "TrivialAugment: Tuning-free Yet State-of-the-Art
Data Augmentation", Table 2: WRN-28-10 on CIFAR-10, TA (Wide) 97.46 +- 0.06%
test accuracy (mean of runs of the final model, full 50k training set).
Their recipe (github.com/automl/trivialaugment, confs/wresnet28x10_cifar10_
b128_maxlr.1_*widesesp_nowarmup_200epochs.yaml): SGD with Nesterov momentum
0.9, lr 0.1 with cosine decay and no warmup, weight decay 5e-4, batch 128,
200 epochs, no dropout; per image TrivialAugmentWide (one op of the wide
space at a uniform strength), then pad-4 crop and flip, then Cutout 16 after
normalisation.

Deviations: none known in the recipe; the ops are PIL's (tests/
test_augment_ops.py) with torchvision's TrivialAugmentWide space, which is
the paper's wide space. Paper protocol: all 50k training images, final
model. About a day on one V100-class GPU; on this 2-core CPU one epoch takes
hours (the config's 1-epoch check runs on a 512-image subset, tests/
test_configs.py). Adding `--config.optim.sam_rho=0.05` gives SAM (Foret et al.
2021), which they report helps WRN-28-10 further with AutoAugment.
"""
from configs import _wide_resnet


def get_config():
  config = _wide_resnet.get_config()
  config.model = "wrn28_10"
  config.model_kwargs.dropout_rate = 0.0
  config.protocol = "paper"
  config.data.train_split = "train"
  config.data.validation_split = ""
  config.augment.policy = "trivialaugment_wide"
  config.augment.cutout = 16
  config.schedule.name = "cosine"
  return config
