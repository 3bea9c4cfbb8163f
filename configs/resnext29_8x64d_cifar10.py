"""ResNeXt-29 (8x64d) on CIFAR-10, Xie et al. (2017).

  python main.py --config=configs/resnext29_8x64d_cifar10.py --workdir=runs/resnext29_8x64d_cifar10

The paper's recipe (Sec. 5.3 and its CIFAR appendix; the authors' Torch
code): SGD with Nesterov momentum 0.9 (train.lua), lr 0.1, weight decay 5e-4,
batch 128, 300 epochs, lr / 10 at epochs 150 and 225; pad-4 crop + flip.
The batch is 8 micro-batches of 16 (`grad_accum_steps = 8`): the authors
trained on 8 GPUs (`-batchSize 128 -nGPU 8` in their README) and Torch's
BatchNorm normalises each GPU's 16 images on its own, so each BatchNorm here
sees 16 images too, on any number of devices; the gradient is the whole
batch's mean, as theirs. It also keeps a CPU's memory at about 8 GB (the
whole batch at once needs over 21 GB).
Published: 3.65% error
(96.35%), Table 7, with 34.4M parameters (34,426,698). 5.4 GFLOPs per image:
a multi-GPU job (the paper used 8 GPUs). `--config.model=resnext29_16x64d`
is the 68.1M, 3.58% model; `resnext29_2x32d` (3.75M) is a small one.

Deviations from the authors' code. The running BatchNorm statistics (used
at evaluation) are updated once per micro-batch, 8 times per step, where
theirs are the first GPU's, updated once per step. And two for stability: the last
BatchNorm of every block starts with scale 0 (`zero_init_last`: each block
starts as the identity; Goyal et al. 2017, Sec. 5.1, timm's default) and the
lr rises linearly from 0 over the first epoch. Without them, 1-epoch CPU
checks on 256-2048-image subsets saw the training loss rise to 5-19 at lr
0.1 (a PyTorch twin with the reference init spikes the same way): the
pooled 1024-channel post-activation features have ~20x the squared norm of
a WRN's, so the first classifier steps overshoot. `--config.model_kwargs.
zero_init_last=False --config.schedule.warmup_epochs=0` is the reference recipe.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnext29_8x64d"
  config.optim.nesterov = True
  config.optim.grad_accum_steps = 8  # BatchNorm over 16 images, as on the paper's 8 GPUs
  config.optim.weight_decay = 5e-4
  config.num_epochs = 300
  config.model_kwargs.zero_init_last = True  # deviation: see the docstring
  config.schedule.warmup_epochs = 1.0  # deviation: see the docstring
  return config
