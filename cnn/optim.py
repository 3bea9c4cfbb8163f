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

from cnn.errors import unknown_name

Builder = Callable[[ml_collections.ConfigDict, optax.Schedule], optax.GradientTransformation]


def decay_mask(params: Any) -> Any:
  """True for the leaves that weight decay and trust ratios apply to: kernels
  (ndim >= 2). Biases and BatchNorm scales/offsets (ndim <= 1) are left out,
  as in the LARS and LAMB papers and optax's examples: decaying them only
  hurts, and their norms are too small for a meaningful trust ratio."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _sgd(config, schedule):
  """SGD with coupled weight decay (PyTorch, the ResNet papers) and optional
  momentum/Nesterov."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))


def _adam(config, schedule):
  """Adam with coupled L2: the decay goes through the adaptive scaling."""
  return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(schedule))


def _adamw(config, schedule):
  """AdamW: decay decoupled from the adaptive scaling, on every parameter."""
  return optax.adamw(schedule, weight_decay=config.weight_decay)


def _lars(config, schedule):
  """LARS (You et al. 2017): per-layer trust ratio 0.001 * |w| / |g + wd w|,
  momentum/Nesterov from the config; kernels only are decayed and adapted
  (`decay_mask`). `learning_rate` is the global rate, so it is much larger
  than SGD's (e.g. several units for big batches)."""
  return optax.lars(schedule, weight_decay=config.weight_decay, weight_decay_mask=decay_mask,
                    trust_ratio_mask=decay_mask, momentum=config.momentum,
                    nesterov=config.nesterov)


def _lamb(config, schedule):
  """LAMB (You et al. 2020): optax.lamb's chain with its defaults, except that
  1-D parameters skip both the decay and the trust ratio (`decay_mask`);
  optax.lamb can only mask the decay."""
  return optax.chain(
      optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.masked(optax.scale_by_trust_ratio(), decay_mask),
      optax.scale_by_learning_rate(schedule))


def _lion(config, schedule):
  """Lion (Chen et al. 2023) with decoupled decay on every parameter, like
  AdamW. Its sign updates want a rate ~3-10x smaller and a decay as much
  larger than AdamW's."""
  return optax.lion(schedule, weight_decay=config.weight_decay)


OPTIMIZERS: dict[str, Builder] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw, "lars": _lars, "lamb": _lamb, "lion": _lion,
}


def _step(config, total, warmup):
  factors: dict[int, float] = {}  # boundaries that round to one step compound
  for boundary in config.lr_boundaries:
    step = int(boundary * total) - warmup
    factors[step] = factors.get(step, 1.0) * config.lr_decay_factor
  return optax.piecewise_constant_schedule(config.learning_rate, factors)


def _cosine(config, total, warmup):
  return optax.cosine_decay_schedule(config.learning_rate, max(total - warmup, 1))


def _linear(config, total, warmup):
  """After a warmup: the one-cycle triangle, down to 0 at the end."""
  return optax.linear_schedule(config.learning_rate, 0.0, max(total - warmup, 1))


def _constant(config, total, warmup):
  """Also the base of "plateau", which scales the updates itself."""
  del total, warmup
  return optax.constant_schedule(config.learning_rate)


# name -> (config, total steps, warmup steps) -> the schedule after the warm phase.
SCHEDULES = {
    "constant": _constant, "step": _step, "cosine": _cosine, "linear": _linear,
    "plateau": _constant,
}

# name -> (config, warmup steps) -> the warm phase.
WARMUP_SHAPES = {
    "linear": lambda config, warmup: optax.linear_schedule(0.0, config.learning_rate, warmup),
    "constant": lambda config, warmup: optax.constant_schedule(
        config.learning_rate * config.warmup_factor),
}


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
  main = SCHEDULES[config.lr_schedule](config, total, warmup)
  if warmup == 0:
    return main
  warm = WARMUP_SHAPES[config.warmup_shape](config, warmup)
  return optax.join_schedules([warm, main], [warmup])


def uses_sam(config: ml_collections.ConfigDict) -> bool:
  """Whether `tx.update` needs SAM's `grad_fn` (see `make_optimizer`)."""
  return config.sam_rho > 0


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


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int
                   ) -> optax.GradientTransformationExtraArgs:
  """The optimiser named by `config.optimizer` (see OPTIMIZERS), composed as

    clip_by_global_norm (grad_clip_norm > 0) -> optimiser -> reduce-on-plateau
    (lr_schedule="plateau") -> SAM (sam_rho > 0) -> MultiSteps (grad_accum_steps > 1)

  Call it as `tx.update(grads, state, params, value=loss, **extra)`:
    * `value`: the training loss, read by reduce-on-plateau (fed each update,
      deciding once per epoch of `steps_per_epoch` updates); ignored otherwise.
    * SAM (`uses_sam(config)`): also `grad_fn=grad_fn`, where `grad_fn(params, i)`
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
  if config.optimizer not in OPTIMIZERS:
    raise unknown_name("optimizer", config.optimizer, OPTIMIZERS)
  schedule = make_lr_schedule(config, steps_per_epoch)
  tx = OPTIMIZERS[config.optimizer](config, schedule)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  if config.lr_schedule == "plateau":
    tx = optax.chain(tx, optax.contrib.reduce_on_plateau(
        factor=config.plateau_factor, patience=config.plateau_patience,
        cooldown=config.plateau_cooldown, min_scale=config.plateau_min_scale,
        accumulation_size=steps_per_epoch))
  tx = optax.with_extra_args_support(tx)
  if uses_sam(config):
    tx = _sam(tx, config.sam_rho)
  if config.grad_accum_steps > 1:
    tx = _accumulate(tx, config.grad_accum_steps)
  return tx


def plateau_scale(opt_state) -> float:
  """The factor reduce-on-plateau currently applies (1.0 without it)."""
  is_plateau = lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)
  states = [x for x in jax.tree.leaves(opt_state, is_leaf=is_plateau) if is_plateau(x)]
  return float(states[0].scale) if states else 1.0
