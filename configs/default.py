"""Defaults every experiment config starts from; each field is a knob.

Other files in configs/ call `default.get_config()` and override a few fields.
Any field can be overridden on the command line: `--config.num_epochs=1`.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # every random stream (init, dropout, data order, augmentation)
  config.protocol = "validation"  # how the reported test accuracy is chosen:
  #   "validation": the epoch with the best accuracy on validation_split (held out of train);
  #   "paper": train on the full training split, report the final model (no selection)

  # Data (see cnn/datasets/__init__.py for the supported names).
  config.dataset = "cifar10"
  config.train_split = "train[:45000]"  # tfds split strings
  config.validation_split = "train[45000:]"  # held out of train; "" = none
  config.test_split = "test"
  config.archive_dir = ""  # original archives for offline use; "" = $CNN_ARCHIVE_DIR
  config.data_source = "auto"  # "tfds" | "archives" (numpy, no TensorFlow) | "auto": tfds if
  #                               installed (cnn/datasets/); the arrays are the same
  config.data_dir = ""  # where tfds keeps prepared data; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.augment = "pad_crop_flip"  # "none" | "pad_crop" | "pad_crop_flip"
  config.crop_padding = 4  # pixels of zero padding before the random crop
  # Every augmentation runs on the accelerator, inside the jitted train step, in this order
  # (cnn/augment/): auto_augment policy -> crop/flip -> normalise -> cutout, random erasing
  # -> mixup or cutmix. Each is a pure function of the uint8 batch and (seed, epoch, step).
  config.auto_augment = "none"  # "none" | "randaugment" (Cubuk et al. 2020) |
  #   "trivialaugment_wide" (Muller & Hutter 2021) | "autoaugment_cifar10" (Cubuk et al. 2019),
  #   torchvision's op spaces and magnitude conventions, PIL's definitions of each op
  config.randaugment_num_ops = 2  # "randaugment": ops applied to each image (N)
  config.randaugment_magnitude = 9  # "randaugment": M, of torchvision's 31 bins (0..30)
  config.cutout = 0  # side of the square zeroed at a random place in each image (DeVries &
  #                    Taylor 2017: 16 for CIFAR-10); 0 = off
  config.random_erasing = 0.0  # probability of erasing a random rectangle of each image
  #   (Zhong et al. 2020; torchvision's RandomErasing: area 2-33%, aspect 0.3-3.3, value 0
  #   after normalisation, i.e. the dataset mean); 0 = off
  config.mixup_alpha = 0.0  # mixup (Zhang et al. 2018): each image is blended with its batch
  #                           mirror by lam ~ Beta(alpha, alpha), the loss likewise; 0 = off
  config.cutmix_alpha = 0.0  # CutMix (Yun et al. 2019): a box of the batch mirror's image is
  #   pasted in, area 1 - lam with lam ~ Beta(alpha, alpha), the loss mixed by area; 0 = off.
  #   With both mixup and cutmix on, each batch uses one of them, even odds (timm, torchvision)

  # Model (see cnn/models/ for the registered names).
  config.model = "resnet20_v1"
  config.model_kwargs = ml_collections.ConfigDict()  # e.g. {"shortcut": "zero_pad"}
  config.dtype = "float32"  # compute dtype ("bfloat16" for mixed precision); params stay float32
  config.gpu_deterministic_ops = False  # True: --xla_gpu_deterministic_ops (same numbers
  #   every run on a GPU, somewhat slower; CPU/TPU are deterministic anyway; cnn/backend.py)
  config.batchnorm = "global"  # "global": statistics over the global batch (all devices);
  #                              "per_device": each device's sub-batch, like pmap without axis_name

  # Optimisation: He et al. (2016) CIFAR recipe.
  config.optimizer = "sgd"  # "sgd" | "adam" | "adamw" | "lars" | "lamb" | "lion" (cnn/optim.py)
  config.learning_rate = 0.1  # peak, for the global batch
  config.momentum = 0.9  # sgd only; 0 = plain SGD
  config.nesterov = False
  config.weight_decay = 1e-4  # L2, coupled for sgd/adam, decoupled for adamw/lars/lamb/lion
  config.grad_clip_norm = 0.0  # > 0: clip the gradient's global norm to this; 0 = off
  config.grad_accum_steps = 1  # k > 1: each global batch is k micro-batches whose gradients
  #   are averaged (optax.MultiSteps) before one update: a batch larger than memory
  config.sam_rho = 0.0  # > 0: sharpness-aware minimisation (Foret et al. 2021) with this
  #   radius (0.05 for CIFAR WRN), optax.contrib.sam; two gradients per step; 0 = off
  config.lr_schedule = "step"  # "constant" | "step" | "cosine" | "linear" | "plateau"
  #                               ("linear" decays to 0 at the end: with warmup, one-cycle)
  config.lr_boundaries = (0.5, 0.75)  # "step": fractions of the run where lr *= decay
  config.lr_decay_factor = 0.1
  config.warmup_epochs = 0.0  # a warm phase before the schedule (rounded to whole steps)
  config.warmup_shape = "linear"  # "linear": from 0 up to the peak; "constant": the peak
  #                                 times warmup_factor (He et al.'s 0.01 for ResNet-110)
  config.warmup_factor = 0.1  # "constant" warm phase only
  config.plateau_factor = 0.1  # "plateau": lr *= factor when the epoch's train loss
  config.plateau_patience = 5  # has not improved for this many epochs,
  config.plateau_cooldown = 0  # then wait this many epochs,
  config.plateau_min_scale = 1e-3  # never going below lr * min_scale
  config.label_smoothing = 0.0
  config.ema_decay = 0.0  # > 0: evaluate an exponential moving average of the parameters,
  #                         updated every step with this decay (e.g. 0.99); 0 = off
  config.eval_flip = False  # test-time augmentation: average the logits of each image and
  #                           its mirror image (evaluation and the report)
  config.batch_size = 128  # global, over all devices and hosts
  config.eval_batch_size = 500
  config.prefetch_batches = 2  # batches copied to the devices ahead of the step
  config.data_on_device = False  # True: keep the training split in accelerator memory and
  #                                 augment there (cnn/device_pipeline.py; small datasets)
  config.num_epochs = 182  # 64k iterations of batch 128 on 45k images

  # Bookkeeping.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 0  # 0 = only at the end of each epoch
  config.keep_checkpoints = 2  # latest ones kept, besides the best by validation
  config.report_image_index = 0  # --mode=evaluate: test image whose activations are drawn
  # --mode=evaluate beyond accuracy (cnn/robustness): comma-separated sections. Calibration
  # takes seconds; corruptions and attacks on all 10k test images ~35 min for ResNet-20 on
  # 2 CPU cores (README), so --config.robustness_examples=1000 gives a quick look.
  config.robustness = "calibration,corruptions,adversarial"  # "" = none
  config.robustness_examples = 0  # corruptions and attacks: first N test images (0 = all)
  config.attack_eps = (1, 2, 8)  # FGSM/PGD L-inf radii, in 1/255 of the pixel range
  config.pgd_steps = 10  # PGD iterations (step eps/4, random start)
  return config
