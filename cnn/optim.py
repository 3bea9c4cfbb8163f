"""Optimisers and learning-rate schedules, built from the config with optax.

Schedule boundaries are fractions of the whole run, so `--config.num_epochs=1`
still gets the full shape of the schedule (He et al.: lr / 10 at 50% and 75%).
"""
import jax
import ml_collections
import optax

from cnn.errors import unknown_name

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "linear", "plateau")
WARMUP_SHAPES = ("linear", "constant")


def make_lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Per-step learning rate: an optional warm phase, then the schedule.

  The warm phase lasts `warmup_epochs` (rounded to whole steps) and is either
  a linear ramp from 0 to the peak (Goyal et al. 2017) or, with
  `warmup_shape="constant"`, the peak times `warmup_factor` (He et al.'s 0.01
  for ResNet-110). Boundaries stay fractions of the whole run, warm phase
  included."""
  if config.lr_schedule not in SCHEDULES:
    raise unknown_name("lr_schedule", config.lr_schedule, SCHEDULES)
  if config.warmup_shape not in WARMUP_SHAPES:
    raise unknown_name("warmup_shape", config.warmup_shape, WARMUP_SHAPES)
  total = int(config.num_epochs * steps_per_epoch)
  warmup = round(config.warmup_epochs * steps_per_epoch)
  lr = config.learning_rate
  if config.lr_schedule == "step":
    factors: dict[int, float] = {}  # boundaries that round to one step compound
    for boundary in config.lr_boundaries:
      step = int(boundary * total) - warmup
      factors[step] = factors.get(step, 1.0) * config.lr_decay_factor
    main = optax.piecewise_constant_schedule(lr, factors)
  elif config.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
  elif config.lr_schedule == "linear":  # after a warmup: the one-cycle triangle
    main = optax.linear_schedule(lr, 0.0, max(total - warmup, 1))
  else:  # constant, and plateau (which scales the updates itself)
    main = optax.constant_schedule(lr)
  if warmup == 0:
    return main
  if config.warmup_shape == "constant":
    warm = optax.constant_schedule(lr * config.warmup_factor)
  else:
    warm = optax.linear_schedule(0.0, lr, warmup)
  return optax.join_schedules([warm, main], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int
                   ) -> optax.GradientTransformationExtraArgs:
  """SGD (momentum/Nesterov) with coupled weight decay as in PyTorch and the
  ResNet papers, Adam with L2, or AdamW with decoupled decay. With
  `lr_schedule='plateau'` the update is scaled by optax's reduce-on-plateau,
  fed each step's training loss and deciding once per epoch."""
  if config.optimizer not in OPTIMIZERS:
    raise unknown_name("optimizer", config.optimizer, OPTIMIZERS)
  schedule = make_lr_schedule(config, steps_per_epoch)
  if config.optimizer == "sgd":
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))
  elif config.optimizer == "adam":
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(schedule))
  else:
    tx = optax.adamw(schedule, weight_decay=config.weight_decay)
  if config.lr_schedule == "plateau":
    tx = optax.chain(tx, optax.contrib.reduce_on_plateau(
        factor=config.plateau_factor, patience=config.plateau_patience,
        cooldown=config.plateau_cooldown, min_scale=config.plateau_min_scale,
        accumulation_size=steps_per_epoch))
  return optax.with_extra_args_support(tx)


def plateau_scale(opt_state) -> float:
  """The factor reduce-on-plateau currently applies (1.0 without it)."""
  is_plateau = lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)
  states = [x for x in jax.tree.leaves(opt_state, is_leaf=is_plateau) if is_plateau(x)]
  return float(states[0].scale) if states else 1.0
