"""The CIFAR-10 ResNet recipe of He et al. (not an experiment itself), shared
by the resnet{20,56,110}v{1,2}_cifar10 configs, under either protocol.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR
2016, Sec. 4.2 (Table 6), and He et al., "Identity Mappings in Deep Residual
Networks", ECCV 2016 (Table 3 for ResNet-110 v2): SGD with momentum 0.9,
lr 0.1, weight decay 1e-4, batch 128, lr / 10 at 32k and 48k iterations, stop
at 64k; 4-pixel pad, random 32x32 crop, random horizontal flip; He-normal
initialisation, BatchNorm after every convolution, no dropout. v1 nets use
the parameter-free zero-padded identity shortcut (option A, "so all
residual models have exactly the same number of parameters as their plain
counterparts"); the pre-activation (v2) reference code (KaimingHe/
resnet-1k-layers) uses 1x1 projections on the pre-activated input. ResNet-110
(2016a) and every v2 net (2016b, appendix) start with 400 iterations at lr
0.01 (`warm_phase`).

Protocols (choose with a suffix: `--config=configs/resnet20v1_cifar10.py:validation`):
- "paper" (default): the paper's final models. All 50k training images,
  64k iterations, the final model's test accuracy is the result (no
  selection on anything).
- "validation": the paper's analysis split. 45k train / 5k held out, the
  same 64k iterations (182 epochs of 351 steps), the result is the test
  accuracy of the epoch with the best validation accuracy (the last epoch's
  is reported alongside).

Deviations that remain (each a few hundredths of a point at most, as far as
is known; none is a free parameter we tuned):
- Iterations: 164 epochs x 390 steps = 63,960 (paper protocol; every epoch
  drops its last 80 images so that each step has a full batch) and lr drops
  at steps 31,980 and 47,970, instead of 64k, 32k and 48k.
- Inputs: normalised per channel by the training set's mean and std; the
  paper subtracts the per-pixel mean. The 4-pixel border is padded with
  black pixels before normalisation (as torchvision's RandomCrop does); in
  the paper's order (mean subtraction first) the border is the mean colour.
- BatchNorm statistics over the whole batch of 128; the paper trained on two
  GPUs (statistics over each GPU's 64: `--config.layers.batchnorm=per_device` on
  2 devices reproduces that).
- The classifier's weights start from flax's LeCun-normal, Torch's from a
  uniform of the same fan-in scale; its bias starts at 0 in both.
"""
import ml_collections

from configs import default

PROTOCOLS = ("paper", "validation")
ITERATIONS = 64_000
CIFAR10_TRAIN = 50_000


def steps_per_epoch(train_images: int, batch_size: int) -> int:
  return train_images // batch_size


def get_config(model: str = "resnet20_v1", protocol: str = "paper") -> ml_collections.ConfigDict:
  """The recipe for `model`; `protocol` is "paper" or "validation"."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)} "
                     "(e.g. --config=configs/resnet20v1_cifar10.py:validation)")
  config = default.get_config()
  config.model = model
  config.protocol = protocol
  if model.endswith("_v1"):
    config.model_kwargs.shortcut = "zero_pad"  # option A
  config.layers.conv_padding = "symmetric"  # Torch's (1, 1) for every 3x3 conv
  train_images = CIFAR10_TRAIN if protocol == "paper" else 45_000
  if protocol == "paper":
    config.data.train_split = "train"
    config.data.validation_split = ""
  else:
    config.data.train_split = "train[:45000]"
    config.data.validation_split = "train[45000:]"
  config.num_epochs = round(ITERATIONS / steps_per_epoch(train_images, config.batch_size))
  config.schedule.boundaries = (0.5, 0.75)  # 32k and 48k of 64k
  config.backend.gpu_deterministic_ops = True  # a seeded paper row gives the same numbers on a GPU
  return config


def warm_phase(config: ml_collections.ConfigDict, iterations: int = 400,
               factor: float = 0.1) -> ml_collections.ConfigDict:
  """He et al. 2016a, Sec. 4.2, for ResNet-110: "we use 0.01 to warm up the
  training until the training error is below 80% (about 400 iterations), and
  then go back to 0.1"; He et al. 2016b (appendix) do the same for all their
  CIFAR experiments, 400 iterations. A fixed 400 iterations at lr x `factor`
  (we do not watch the training error: a fixed count keeps the run
  reproducible)."""
  train_images = CIFAR10_TRAIN if config.protocol == "paper" else 45_000
  config.schedule.warmup_epochs = iterations / steps_per_epoch(train_images, config.batch_size)
  config.schedule.warmup_shape = "constant"
  config.schedule.warmup_factor = factor
  return config
