"""Optimisers and learning-rate schedules, built from the config with optax.

Each name the config may give is a key of a table (`OPTIMIZERS`, `SCHEDULES`,
`WARMUP_SHAPES`) whose value builds it, so the dispatch, the names that
config validation accepts and the list in the error message are one thing.

Schedule boundaries are fractions of the whole run, so `--config.num_epochs=1`
still gets the full shape of the schedule (He et al.: lr / 10 at 50% and 75%).
The schedule counts optimiser updates, i.e. global batches, whether or not a
batch is accumulated from micro-batches.
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cnn.schema import Section, Setting, at_least, between, unknown_value

Builder = Callable[[ml_collections.ConfigDict, optax.Schedule], optax.GradientTransformation]
# (the `optim` section, the learning-rate schedule) -> the optimiser


def decay_mask(params: Any) -> Any:
  """True for the leaves that weight decay and trust ratios apply to: kernels
  (ndim >= 2). Biases and BatchNorm scales/offsets (ndim <= 1) are left out,
  as in the LARS and LAMB papers and optax's examples: decaying them only
  hurts, and their norms are too small for a meaningful trust ratio."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _sgd(optim, schedule):
  """SGD with coupled weight decay (PyTorch, the ResNet papers) and optional
  momentum/Nesterov."""
  return optax.chain(
      optax.add_decayed_weights(optim.weight_decay),
      optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov))


def _adam(optim, schedule):
  """Adam with coupled L2: the decay goes through the adaptive scaling."""
  return optax.chain(optax.add_decayed_weights(optim.weight_decay), optax.adam(schedule))


def _adamw(optim, schedule):
  """AdamW: decay decoupled from the adaptive scaling, on every parameter."""
  return optax.adamw(schedule, weight_decay=optim.weight_decay)


def _lars(optim, schedule):
  """LARS (You et al. 2017): per-layer trust ratio 0.001 * |w| / |g + wd w|,
  momentum/Nesterov from the config; kernels only are decayed and adapted
  (`decay_mask`). `learning_rate` is the global rate, so it is much larger
  than SGD's (e.g. several units for big batches)."""
  return optax.lars(schedule, weight_decay=optim.weight_decay, weight_decay_mask=decay_mask,
                    trust_ratio_mask=decay_mask, momentum=optim.momentum,
                    nesterov=optim.nesterov)


def _lamb(optim, schedule):
  """LAMB (You et al. 2020): optax.lamb's chain with its defaults, except that
  1-D parameters skip both the decay and the trust ratio (`decay_mask`);
  optax.lamb can only mask the decay."""
  return optax.chain(
      optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
      optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
      optax.masked(optax.scale_by_trust_ratio(), decay_mask),
      optax.scale_by_learning_rate(schedule))


def _lion(optim, schedule):
  """Lion (Chen et al. 2023) with decoupled decay on every parameter, like
  AdamW. Its sign updates want a rate ~3-10x smaller and a decay as much
  larger than AdamW's."""
  return optax.lion(schedule, weight_decay=optim.weight_decay)


OPTIMIZERS: dict[str, Builder] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw, "lars": _lars, "lamb": _lamb, "lion": _lion,
}


def _step(schedule, peak, total, warmup):
  factors: dict[int, float] = {}  # boundaries that round to one step compound
  for boundary in schedule.boundaries:
    step = int(boundary * total) - warmup
    factors[step] = factors.get(step, 1.0) * schedule.decay_factor
  return optax.piecewise_constant_schedule(peak, factors)


def _cosine(schedule, peak, total, warmup):
  del schedule
  return optax.cosine_decay_schedule(peak, max(total - warmup, 1))


def _linear(schedule, peak, total, warmup):
  """After a warmup: the one-cycle triangle, down to 0 at the end."""
  del schedule
  return optax.linear_schedule(peak, 0.0, max(total - warmup, 1))


def _constant(schedule, peak, total, warmup):
  """Also the base of "plateau", which scales the updates itself."""
  del schedule, total, warmup
  return optax.constant_schedule(peak)


# name -> (the schedule section, peak rate, total steps, warmup steps) -> the schedule
# after the warm phase.
SCHEDULES = {
    "constant": _constant, "step": _step, "cosine": _cosine, "linear": _linear,
    "plateau": _constant,
}

# name -> (the schedule section, peak rate, warmup steps) -> the warm phase.
WARMUP_SHAPES = {
    "linear": lambda schedule, peak, warmup: optax.linear_schedule(0.0, peak, warmup),
    "constant": lambda schedule, peak, warmup: optax.constant_schedule(
        peak * schedule.warmup_factor),
}


def _increasing_fractions(v) -> bool:
  return all(0.0 < b < 1.0 for b in v) and all(a < b for a, b in zip(v, v[1:]))


CONFIG = (
    Section("optim", "the optimiser and the loss (He et al. 2016's CIFAR recipe by default)", {
        "name": Setting("sgd", "a key of OPTIMIZERS",
                        choices=OPTIMIZERS),
        "momentum": Setting(0.9, "sgd, lars: momentum; 0 = plain SGD", between(0, 1),
                            "in [0, 1)"),
        "nesterov": Setting(False, "Nesterov momentum (sgd, lars)", example=True),
        "weight_decay": Setting(1e-4, "L2, coupled for sgd/adam, decoupled for "
                                "adamw/lars/lamb/lion", at_least(0), ">= 0"),
        "grad_clip_norm": Setting(0.0, "> 0: clip the gradient's global norm to this; 0 = off",
                                  at_least(0), ">= 0 (0 = off)", example=1.0),
        "grad_accum_steps": Setting(1, "k > 1: each global batch is k micro-batches whose "
                                    "gradients are averaged (optax.MultiSteps) before one "
                                    "update", at_least(1), ">= 1 (1 = off)", example=2),
        "sam_rho": Setting(0.0, "> 0: sharpness-aware minimisation (Foret et al. 2021) with "
                           "this radius (0.05 for CIFAR WRN), optax.contrib.sam; two "
                           "gradients per step; 0 = off", at_least(0), ">= 0 (0 = off)",
                           example=0.05),
        "label_smoothing": Setting(0.0, "the loss's label smoothing", between(0, 1),
                                   "in [0, 1)", example=0.1),
        "ema_decay": Setting(0.0, "> 0: evaluate an exponential moving average of the "
                             "parameters, updated every step with this decay (e.g. 0.99); "
                             "0 = off", between(0, 1), "in [0, 1) (0 = off)", example=0.999),
    }, renamed={"optimizer": "name", "momentum": "momentum", "nesterov": "nesterov",
                "weight_decay": "weight_decay", "grad_clip_norm": "grad_clip_norm",
                "grad_accum_steps": "grad_accum_steps", "sam_rho": "sam_rho",
                "label_smoothing": "label_smoothing", "ema_decay": "ema_decay"}),
    Section("schedule", "the learning rate over the run (fractions of the run, warm phase "
            "included)", {
        "name": Setting("step", "a key of SCHEDULES ('linear' decays to 0 at the end: with "
                        "warmup, one-cycle)",
                        choices=SCHEDULES),
        "boundaries": Setting((0.5, 0.75), "'step': fractions of the run where lr *= "
                              "decay_factor", _increasing_fractions,
                              "increasing fractions of the run in (0, 1)"),
        "decay_factor": Setting(0.1, "'step': the factor at each boundary",
                                lambda v: 0 < v <= 1, "in (0, 1]"),
        "warmup_epochs": Setting(0.0, "a warm phase before the schedule (rounded to whole "
                                 "steps)", at_least(0), ">= 0", example=1.0),
        "warmup_shape": Setting("linear", "'linear': from 0 up to the peak; 'constant': the "
                                "peak times warmup_factor (He et al.'s 0.01 for ResNet-110)",
                                choices=WARMUP_SHAPES),
        "warmup_factor": Setting(0.1, "'constant' warm phase only", lambda v: 0 < v <= 1,
                                 "in (0, 1]"),
        "plateau_factor": Setting(0.1, "'plateau': lr *= factor when the epoch's train loss",
                                  lambda v: 0 < v < 1, "in (0, 1)"),
        "plateau_patience": Setting(5, "has not improved for this many epochs,", at_least(0),
                                    ">= 0"),
        "plateau_cooldown": Setting(0, "then wait this many epochs,", at_least(0), ">= 0"),
        "plateau_min_scale": Setting(1e-3, "never going below lr * min_scale",
                                     lambda v: 0 < v <= 1, "in (0, 1]"),
    }, renamed={"lr_schedule": "name", "lr_boundaries": "boundaries",
                "lr_decay_factor": "decay_factor", "warmup_epochs": "warmup_epochs",
                "warmup_shape": "warmup_shape", "warmup_factor": "warmup_factor",
                "plateau_factor": "plateau_factor", "plateau_patience": "plateau_patience",
                "plateau_cooldown": "plateau_cooldown",
                "plateau_min_scale": "plateau_min_scale"}),
)


def make_lr_schedule(schedule: ml_collections.ConfigDict, learning_rate: float,
                     num_epochs: float, steps_per_epoch: int) -> optax.Schedule:
  """Per-step learning rate of a config's `schedule` section, peaking at
  `learning_rate`, over `num_epochs` epochs: an optional warm phase, then the
  schedule.

  The warm phase lasts `warmup_epochs` (rounded to whole steps) and is either
  a linear ramp from 0 to the peak (Goyal et al. 2017) or, with
  `warmup_shape="constant"`, the peak times `warmup_factor` (He et al.'s 0.01
  for ResNet-110). Boundaries stay fractions of the whole run, warm phase
  included."""
  if schedule.name not in SCHEDULES:
    raise unknown_value("schedule.name", schedule.name, SCHEDULES)
  if schedule.warmup_shape not in WARMUP_SHAPES:
    raise unknown_value("schedule.warmup_shape", schedule.warmup_shape, WARMUP_SHAPES)
  total = int(num_epochs * steps_per_epoch)
  warmup = round(schedule.warmup_epochs * steps_per_epoch)
  main = SCHEDULES[schedule.name](schedule, learning_rate, total, warmup)
  if warmup == 0:
    return main
  warm = WARMUP_SHAPES[schedule.warmup_shape](schedule, learning_rate, warmup)
  return optax.join_schedules([warm, main], [warmup])


def uses_sam(optim: ml_collections.ConfigDict) -> bool:
  """Whether `tx.update` needs SAM's `grad_fn` (see `make_optimizer`); `optim`
  is a config's `optim` section."""
  return optim.sam_rho > 0


def _sam(optimizer: optax.GradientTransformationExtraArgs, rho: float
         ) -> optax.GradientTransformationExtraArgs:
  """optax.contrib.sam in opaque mode, passing extra args on to `optimizer`.

  The ascent is optax's recipe: normalize() then sgd(rho) gives -rho g/|g|,
  which SAM negates, so the gradient is taken at w + rho g/|g| (Foret et al.).
  optax's SAM calls the outer optimiser without extra args and accepts none
  but `grad_fn` itself, so the plateau's `value` would be refused; here the
  outer optimiser is rebuilt per call with the extra args bound. The state is
  optax's SAMState."""
  adversary = optax.chain(optax.contrib.normalize(), optax.sgd(rho))

  def sam_with(**extra_args):
    bound = optax.GradientTransformation(
        optimizer.init, functools.partial(optimizer.update, **extra_args))
    return optax.contrib.sam(bound, adversary, sync_period=2, opaque_mode=True)

  def update(updates, state, params=None, *, grad_fn=None, **extra_args):
    return sam_with(**extra_args).update(updates, state, params, grad_fn=grad_fn)

  return optax.GradientTransformationExtraArgs(sam_with().init, update)


def _accumulate(tx: optax.GradientTransformationExtraArgs, k: int
                ) -> optax.GradientTransformationExtraArgs:
  """optax.MultiSteps averaging k micro-batch gradients into one update.
  Not `.gradient_transformation()`: that is a plain GradientTransformation,
  which `with_extra_args_support` would wrap by dropping the extra args."""
  multi = optax.MultiSteps(tx, every_k_schedule=k)
  return optax.GradientTransformationExtraArgs(multi.init, multi.update)


def make_optimizer(optim: ml_collections.ConfigDict, schedule: ml_collections.ConfigDict, *,
                   learning_rate: float, num_epochs: float, steps_per_epoch: int
                   ) -> optax.GradientTransformationExtraArgs:
  """The optimiser a config's `optim` section names (see OPTIMIZERS), with the
  learning rate of its `schedule` section (`make_lr_schedule`), composed as

    clip_by_global_norm (grad_clip_norm > 0) -> optimiser -> reduce-on-plateau
    (lr_schedule="plateau") -> SAM (sam_rho > 0) -> MultiSteps (grad_accum_steps > 1)

  Call it as `tx.update(grads, state, params, value=loss, **extra)`:
    * `value`: the training loss, read by reduce-on-plateau (fed each update,
      deciding once per epoch of `steps_per_epoch` updates); ignored otherwise.
    * SAM (`uses_sam(optim)`): also `grad_fn=grad_fn`, where `grad_fn(params, i)`
      returns the gradient of the same loss (same batch, same augmentation and
      dropout keys) at `params`, a tree like `grads` (no loss, no aux). SAM
      calls it once per update, with the ascent point w + rho g/|g| and i = 0
      (the adversarial step index; sync_period=2 means one). `grads` is the
      gradient at `params`; the returned update is the optimiser's step from
      the ascent-point gradient, taken at `params`. BatchNorm statistics of
      the ascent pass should be discarded.
    * MultiSteps: one call per micro-batch with its gradient (and loss); the
      first k-1 calls return zero updates and leave the optimiser untouched,
      the k-th returns the optimiser's update for the mean of the k gradients,
      so the schedule and the plateau count global batches. The plateau sees
      the `value` passed with the k-th micro-batch.
  `plateau_scale(state)` finds the plateau inside any of these wrappers."""
  if optim.name not in OPTIMIZERS:
    raise unknown_value("optim.name", optim.name, OPTIMIZERS)
  rates = make_lr_schedule(schedule, learning_rate, num_epochs, steps_per_epoch)
  tx = OPTIMIZERS[optim.name](optim, rates)
  if optim.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  if schedule.name == "plateau":
    tx = optax.chain(tx, optax.contrib.reduce_on_plateau(
        factor=schedule.plateau_factor, patience=schedule.plateau_patience,
        cooldown=schedule.plateau_cooldown, min_scale=schedule.plateau_min_scale,
        accumulation_size=steps_per_epoch))
  tx = optax.with_extra_args_support(tx)
  if uses_sam(optim):
    tx = _sam(tx, optim.sam_rho)
  if optim.grad_accum_steps > 1:
    tx = _accumulate(tx, optim.grad_accum_steps)
  return tx


def plateau_scale(opt_state) -> float:
  """The factor reduce-on-plateau currently applies (1.0 without it)."""
  is_plateau = lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)
  states = [x for x in jax.tree.leaves(opt_state, is_leaf=is_plateau) if is_plateau(x)]
  return float(states[0].scale) if states else 1.0
