"""DenseNet-BC (L=100, k=12) on CIFAR-10, Huang et al. (2017).

  python main.py --config=configs/densenet_bc100_cifar10.py --workdir=runs/densenet_bc100_cifar10

The paper's recipe (Sec. 4.2): SGD with Nesterov momentum 0.9 (no
dampening), lr 0.1, weight decay 1e-4, batch 64, 300 epochs, lr / 10 at 50%
and 75% of training; pad-4 crop + flip, no dropout with augmentation.
Published: 4.51% error (95.49%) on augmented CIFAR-10 (C10+, Table 2), with
0.8M parameters (769,162). The paper trained on all 50k training images; we
hold out 5k for model selection as in every config here.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "densenet_bc100_k12"
  config.model_kwargs.dropout_rate = 0.0
  config.optim.nesterov = True
  config.batch_size = 64
  config.num_epochs = 300
  return config
