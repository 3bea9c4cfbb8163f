"""Training and evaluation: data -> model -> optax -> orbax, for any config.

Reads top to bottom: the state, the loss, the two jitted steps, evaluation,
then `train_and_evaluate`, which owns the loop, checkpoints and metrics.

Data parallelism follows JAX's current recommendation (jit over a device mesh
with `NamedSharding`, not `pmap`): the state is replicated, each batch is
sharded along its first axis over a 1-D "data" mesh, and XLA inserts the
collectives. BatchNorm therefore normalises over the global batch, exactly as
on one device.
"""
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import time
from typing import Any, Callable, Iterable, Iterator, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from cnn import (backend, batching, checkpoint, datasets, device_pipeline, distributed,
                 metric_writers, model_fn, optim, preemption, settings)
from cnn.augment import make_augment, step_key
from cnn import workdir as workdirs
from cnn import workdir_lock
from cnn.errors import Preempted, UserError


def ema_decay_at(step: jnp.ndarray, decay: float) -> jnp.ndarray:
  """The decay of the average's update number `step` (0, 1, ...): `decay`,
  capped by (1 + step) / (10 + step) early on (the warm-up of TensorFlow's
  ExponentialMovingAverage), so a short run's average is not mostly the
  initial weights."""
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


class TrainState(train_state.TrainState):
  batch_stats: Any
  ema: Any = struct.field(default_factory=dict)  # {} = no EMA; else {"params", "batch_stats"}

  def apply_gradients(self, *, grads, batch_stats, loss, ema_decay: float = 0.0, **extra_args):
    """`loss` feeds optimisers that need it (reduce-on-plateau); `extra_args`
    others (SAM's `grad_fn`). With `ema_decay`, `ema` averages the new
    parameters and BatchNorm statistics."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params, value=loss,
                                        **extra_args)
    return self.finish_step(optax.apply_updates(self.params, updates), opt_state, batch_stats,
                            ema_decay)

  def finish_step(self, params, opt_state, batch_stats, ema_decay: float) -> "TrainState":
    """The state after one global batch: new variables, step + 1, the EMA."""
    ema = self.ema
    if ema_decay:
      d = ema_decay_at(self.step, ema_decay)
      ema = jax.tree.map(lambda e, x: d * e + (1 - d) * x, ema,
                         {"params": params, "batch_stats": batch_stats})
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state,
                        batch_stats=batch_stats, ema=ema)

  @property
  def eval_variables(self) -> dict:
    """The variables inference uses: the moving averages when kept."""
    return self.ema or {"params": self.params, "batch_stats": self.batch_stats}


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def create_train_state(model: flax.linen.Module, tx: optax.GradientTransformation,
                       key: jax.Array, image_shape: tuple[int, ...], ema: bool = False
                       ) -> TrainState:
  variables = jax.jit(model.init, static_argnames="train")(
      {"params": key}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  return TrainState.create(apply_fn=model.apply, tx=tx, **variables,
                           ema=jax.tree.map(jnp.copy, variables) if ema else {})


def cross_entropy_loss(logits: jnp.ndarray, labels: jnp.ndarray, label_smoothing: float
                       ) -> jnp.ndarray:
  """Per-example loss; smoothing mixes the one-hot target with uniform."""
  return soft_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)


def soft_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray, label_smoothing: float
                       ) -> jnp.ndarray:
  """Per-example loss against soft targets (one-hot, or mixed by mixup/CutMix:
  the loss is linear in the target, so this is the mixed loss of the papers);
  smoothing mixes the target with uniform."""
  return optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing))


def zero_sums() -> dict[str, jnp.ndarray]:
  """Running sums of an epoch's training metrics (checkpointed for resume),
  and the first step whose loss was not finite (-1: none), kept on device so
  the guard costs no host sync per step."""
  return {"loss": jnp.zeros((), jnp.float32), "correct": jnp.zeros((), jnp.float32),
          "count": jnp.zeros((), jnp.float32), "first_nonfinite_step": jnp.full((), -1, jnp.int32)}


def batch_loss(params, batch_stats, images: jnp.ndarray, targets: jnp.ndarray,
               rng: jax.Array, *, apply_fn: Callable, label_smoothing: float):
  """Mean loss of a batch in training mode; aux: (logits, new BatchNorm stats)."""
  logits, updates = apply_fn({"params": params, "batch_stats": batch_stats}, images, train=True,
                             mutable=["batch_stats"], rngs={"dropout": rng})
  loss = soft_cross_entropy(logits, targets, label_smoothing).mean()
  return loss, (logits, updates["batch_stats"])


def micro_batches(x: jnp.ndarray, k: int) -> jnp.ndarray:
  """[n, ...] -> [k, n / k, ...]: micro-batch i holds rows i, i + k, ..., so
  each micro-batch is spread over all the devices that share the batch."""
  return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def accumulated_step(state: TrainState, images: jnp.ndarray, targets: jnp.ndarray,
                     rng: jax.Array, loss_fn: Callable, k: int, ema_decay: float):
  """One update from k micro-batches: state.tx is optax.MultiSteps, which
  averages the k gradients and applies the inner optimiser on the k-th (the
  other updates are zeros). A micro-batch's activations die with its
  gradient, so the peak memory is a few micro-batches' rather than the whole
  batch's; BatchNorm statistics are per micro-batch and updated k times.
  Returns (state, mean loss, logits [k, n / k, classes])."""
  def micro(carry, xs):
    params, opt_state, batch_stats = carry
    i, x, t = xs
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, x, t, jax.random.fold_in(rng, i))
    updates, opt_state = state.tx.update(grads, opt_state, params, value=loss)
    return (optax.apply_updates(params, updates), opt_state, batch_stats), (loss, logits)

  carry = (state.params, state.opt_state, state.batch_stats)
  xs = (jnp.arange(k), micro_batches(images, k), micro_batches(targets, k))
  # XLA:CPU runs the body of a rolled loop several times slower than the same
  # ops unrolled (ResNeXt-29 8x64d, 8 micro-batches of 16: 100 s per step
  # rolled, 17.5 s unrolled, peak memory 4.9 vs 8.2 GB, on the 2-core CPU),
  # so the CPU unrolls it; accelerators keep the loop, which keeps memory lowest.
  unroll = k if jax.default_backend() == "cpu" else 1
  (params, opt_state, batch_stats), (losses, logits) = lax.scan(micro, carry, xs, unroll=unroll)
  return state.finish_step(params, opt_state, batch_stats, ema_decay), losses.mean(), logits


def train_step(state: TrainState, sums: dict, batch: dict, *, augment: Callable, seed: int,
               steps_per_epoch: int, dropout_key: jax.Array, label_smoothing: float,
               ema_decay: float = 0.0, accum_steps: int = 1, sam: bool = False
               ) -> tuple[TrainState, dict, jnp.ndarray]:
  """One optimiser update from a global batch of uint8 images: augments it
  (cnn/augment/, keyed by (seed, epoch, step)), then one gradient (SAM: two;
  accumulation: one per micro-batch). Returns the new state, updated epoch
  sums and the batch loss."""
  epoch, step_in_epoch = jnp.divmod(state.step, steps_per_epoch)
  batch = augment(batch["image"], batch["label"], step_key(seed, epoch, step_in_epoch))
  images, targets, labels = batch["image"], batch["target"], batch["label"]
  rng = jax.random.fold_in(dropout_key, state.step)
  loss_fn = functools.partial(batch_loss, apply_fn=state.apply_fn,
                              label_smoothing=label_smoothing)
  if accum_steps > 1:
    state, loss, logits = accumulated_step(state, images, targets, rng, loss_fn, accum_steps,
                                           ema_decay)
    labels = micro_batches(labels, accum_steps)
  else:
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, images, targets, rng)
    extra = {}
    if sam:  # optax.contrib.sam (opaque mode) asks for the gradient at the ascent point
      extra["grad_fn"] = lambda params, _: jax.grad(lambda p: loss_fn(
          p, state.batch_stats, images, targets, rng)[0])(params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats, loss=loss,
                                  ema_decay=ema_decay, **extra)
  n = jnp.float32(labels.size)
  correct = jnp.sum(jnp.argmax(logits, -1) == labels)
  first_bad = sums["first_nonfinite_step"]
  first_bad = jnp.where((first_bad < 0) & ~jnp.isfinite(loss), state.step, first_bad)
  sums = {"loss": sums["loss"] + loss * n, "correct": sums["correct"] + correct,
          "count": sums["count"] + n, "first_nonfinite_step": first_bad}
  return state, sums, loss


# The recorded test accuracy is the float32 model's on every backend: GPUs run float32
# convolutions and matmuls on TF32 by default and TPUs on bfloat16 passes, which can flip
# near-tie images, and weights evaluated on another machine (tests/test_weights.py) must
# reproduce the number. On the CPU float32 is always full precision: nothing to change there.
TEST_PRECISION = "highest"


def eval_step(state: TrainState, batch: dict, spec: datasets.DatasetSpec, flip: bool = False,
              precision: str | None = None) -> dict[str, jnp.ndarray]:
  """Sums over the real (mask == 1) examples of a padded batch of uint8 images;
  `precision`: the matmuls' and convolutions' (jax.default_matmul_precision)."""
  with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
    logits = model_fn.logits(state.apply_fn, state.eval_variables, batch["image"], spec.mean,
                             spec.std, flip)
  losses = cross_entropy_loss(logits, batch["label"], 0.0)
  correct = jnp.argmax(logits, -1) == batch["label"]
  mask = batch["mask"]
  return {"loss": jnp.sum(losses * mask), "correct": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}


def make_mesh() -> Mesh:
  """A 1-D "data" mesh over every device of every process, in the order
  `jax.make_mesh` chooses (topology-aware on TPU slices)."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def replicate(tree: Any, sharding: NamedSharding) -> Any:
  """A copy of `tree` on every device of every process, built from host
  values (every process computes the same). Going through the host matters:
  `device_put` of an array already on a device, with one device per process
  (one process per GPU), makes arrays whose shards orbax cannot save."""
  return jax.device_put(jax.device_get(tree), sharding)


def fit_eval_batch_size(batch_size: int, device_count: int) -> int:
  """The evaluation batch rounded up to a multiple of the devices: evaluation
  pads the last batch and masks the padding, so any size gives the same
  metrics, and the default 500 must not stop a run on 8 or 16 devices."""
  fitted = -(-batch_size // device_count) * device_count
  if fitted != batch_size:
    logging.info("eval_batch_size %d -> %d (a multiple of the %d devices; padded examples are "
                 "masked out)", batch_size, fitted, device_count)
  return fitted


def host_pipeline():
  """input_pipeline.py (tf.data), or a one-line error where TensorFlow is missing."""
  try:
    from cnn import input_pipeline  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError("config.data.on_device=False feeds batches with tf.data, which needs "
                    "tensorflow; install it or set --config.data.on_device=True") from None
  return input_pipeline


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's rows -> one array sharded over all devices of all hosts."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_device(batches: Iterator[dict], sharding: NamedSharding, size: int
                       ) -> Iterator[dict[str, jax.Array]]:
  """Keeps `size` batches already on their devices ahead of the step that
  consumes them, so the host-to-device copy overlaps with computation."""
  queue = collections.deque()
  for batch in batches:
    queue.append(to_global(batch, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def evaluate(eval_fn: Callable, state: TrainState, batches: Iterator[dict],
             sharding: NamedSharding) -> dict[str, float]:
  totals = None
  for batch in prefetch_to_device(batches, sharding, 2):
    sums = eval_fn(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"loss": float(totals["loss"]) / count, "accuracy": float(totals["correct"]) / count,
          "count": int(count)}


@dataclasses.dataclass(frozen=True)
class Pacing:
  """When the training loop does what, counted in steps (optimiser updates)."""
  total_steps: int
  steps_per_epoch: int
  batch_size: int  # global: the progress line's images/s
  log_every_steps: int  # a progress line and a step record
  every_epochs: int  # saves: checkpoint.due
  every_steps: int


class TrainingRun(Protocol):
  """What `train_epochs` needs of a run. `Run` (one seed) meets it, and so does
  `sweep.SeedStack` (the stacked seeds of a vmapped sweep)."""
  pacing: Pacing
  state: Any  # the train state(s) the step threads through
  sums: Any  # the epoch's running sums
  window: list  # the batch losses since the last step record
  checkpoints: str  # where the checkpoints go (for the stop message)

  @property
  def step(self) -> int:
    """The steps trained, read once at the start (the loop counts on the host)."""

  def train_step(self, state: Any, sums: Any, batch: Any) -> tuple[Any, Any, jax.Array]:
    """(state, sums, loss) after one step; dispatched ahead, never waited for."""

  def batches(self, epoch: int, start_step: int) -> Iterable[Any]:
    """The epoch's batches from `start_step` of it, already on the devices."""

  def host_sums(self) -> dict:
    """The running sums, read on the host (a sync point)."""

  def close_window(self) -> None:
    """Turns `window` into the next step record."""

  def save(self) -> None:
    """Checkpoints the state mid-epoch (asynchronously)."""

  def end_epoch(self, epoch: int, train_seconds: float, timed_steps: int, started: float,
                save: bool) -> None:
    """Records the epoch (validation too), restarts `sums`, saves if `save`."""

  def reached_preemption(self, step: int) -> bool:
    """Whether the cluster asks to stop at `step` (orbax's preemption check)."""

  def wait_for_saves(self) -> None:
    """Waits for the checkpoint writes in flight."""


class Experiment:
  """Everything built once from the config: data, model, optimizer, steps."""

  def __init__(self, config: ml_collections.ConfigDict, shared: "Experiment | None" = None):
    """`shared`: an experiment of the same config but for its seed (a seed
    sweep's first), whose loaded splits, training data on the devices and
    compiled evaluation this one reuses: nothing that depends on the seed."""
    self.config = config
    self.spec = datasets.get_spec(config.data.name)
    if not config.data.on_device:
      host_pipeline()  # without TensorFlow, fail before loading anything
    self.mesh = make_mesh()
    batching.check_batch_size(config.batch_size, jax.device_count())
    if config.optim.grad_accum_steps > 1:
      batching.check_batch_size(config.batch_size // config.optim.grad_accum_steps,
                                jax.device_count(), "batch_size / config.optim.grad_accum_steps")
    self.eval_batch_size = fit_eval_batch_size(config.eval.batch_size, jax.device_count())
    norm_groups = jax.device_count() if config.layers.batchnorm == "per_device" else 1
    self.model = model_fn.build(config.model, config.model_kwargs, config.layers,
                                self.spec.num_classes, norm_groups)
    if shared is None:
      source = datasets.open_data(config.data)
      self.class_names = source.class_names()
      self.splits = {name: source.load_split(split) for name, split in (
          ("train", config.data.train_split), ("validation", config.data.validation_split),
          ("test", config.data.test_split)) if split}
    else:
      self.class_names, self.splits = shared.class_names, shared.splits
    self.steps_per_epoch = batching.steps_per_epoch(
        len(self.splits["train"][0]), config.batch_size)
    if self.steps_per_epoch == 0:
      raise UserError(f"train split {config.data.train_split!r} has fewer examples than "
                      f"batch_size={config.batch_size}")
    self.total_steps = config.num_epochs * self.steps_per_epoch
    rates = {"learning_rate": config.learning_rate, "num_epochs": config.num_epochs,
             "steps_per_epoch": self.steps_per_epoch}
    self.schedule = optim.make_lr_schedule(config.schedule, **rates)
    self.tx = optim.make_optimizer(config.optim, config.schedule, **rates)
    self.train_shard = batching.Shard(config.batch_size, jax.process_index(),
                                      jax.process_count())
    self.eval_shard = batching.Shard(self.eval_batch_size, jax.process_index(),
                                     jax.process_count())
    replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    init_key, self.dropout_key = jax.random.split(jax.random.key(config.seed))
    self.initial_state = replicate(
        create_train_state(self.model, self.tx, init_key, self.spec.image_shape,
                           ema=config.optim.ema_decay > 0), replicated)
    self.train_step = jax.jit(
        functools.partial(train_step, **self.step_settings, seed=config.seed,
                          dropout_key=self.dropout_key),
        in_shardings=(replicated, replicated, self.batch_sharding),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1))
    jit_eval = lambda precision=None: jax.jit(  # noqa: E731
        functools.partial(eval_step, spec=self.spec, flip=config.eval.flip, precision=precision),
        in_shardings=(replicated, self.batch_sharding), out_shardings=replicated)
    self.eval_step = shared.eval_step if shared else jit_eval()
    self.test_step = shared.test_step if shared else (
        self.eval_step if jax.default_backend() == "cpu" else jit_eval(TEST_PRECISION))
    if shared is not None and "device_data" in vars(shared):
      self.device_data = shared.device_data.reseeded(config.seed)
    self.zero_sums = lambda: replicate(zero_sums(), replicated)

  @property
  def step_settings(self) -> dict:
    """`train_step`'s keyword arguments besides the seed's (`seed`, `dropout_key`)."""
    c = self.config
    return {"augment": make_augment(c.augment, self.spec), "steps_per_epoch": self.steps_per_epoch,
            "label_smoothing": c.optim.label_smoothing, "ema_decay": c.optim.ema_decay,
            "accum_steps": c.optim.grad_accum_steps, "sam": c.optim.sam_rho > 0}

  @functools.cached_property
  def pacing(self) -> Pacing:
    c = self.config
    return Pacing(self.total_steps, self.steps_per_epoch, c.batch_size, c.log.every_steps,
                  c.checkpoint.every_epochs, c.checkpoint.every_steps)

  @functools.cached_property
  def fingerprint(self) -> dict:
    """What a checkpoint must match to be resumed by this config."""
    return {"model": self.config.model, "dataset": self.config.data.name,
            "model_kwargs": self.config.model_kwargs.to_dict(),
            "num_params": count_params(self.initial_state.params)}

  @functools.cached_property
  def device_data(self) -> device_pipeline.DeviceData:
    """The training split copied to the devices (config.data.on_device)."""
    images, labels = self.splits["train"]
    c = self.config
    return device_pipeline.DeviceData(
        images, labels, batch_size=c.batch_size, seed=c.seed,
        replicated=NamedSharding(self.mesh, P()), batch_sharding=self.batch_sharding)

  def device_batches(self, epoch: int, start_step: int) -> Iterator[dict[str, jax.Array]]:
    """The epoch's global training batches from `start_step` on, on the devices:
    made there (config.data.on_device) or by tf.data and copied ahead."""
    if self.config.data.on_device:
      return self.device_data.batches(epoch, start_step)
    return prefetch_to_device(self.train_batches(epoch, start_step), self.batch_sharding,
                              self.config.data.prefetch_batches)

  def train_batches(self, epoch: int, start_step: int) -> Iterator[dict]:
    """This process's host-side (tf.data) part of each training batch."""
    images, labels = self.splits["train"]
    return host_pipeline().train_batches(images, labels, shard=self.train_shard,
                                         seed=self.config.seed, epoch=epoch,
                                         start_step=start_step)

  def evaluate(self, state: TrainState, split: str) -> dict[str, float]:
    """The test split at TEST_PRECISION, the others at the backend's default."""
    images, labels = self.splits[split]
    return evaluate(self.test_step if split == "test" else self.eval_step, state,
                    self.eval_batches(images, labels), self.batch_sharding)

  def eval_batches(self, images: np.ndarray, labels: np.ndarray) -> Iterator[dict]:
    return batching.eval_batches(images, labels, shard=self.eval_shard)

  def learning_rate(self, state: TrainState) -> float:
    return float(self.schedule(int(state.step))) * optim.plateau_scale(state.opt_state)


def check_finite(sums: dict) -> None:
  """Stops before anything non-finite is checkpointed (`sums` of one run, or
  of a seed sweep's stacked runs)."""
  bad = np.asarray(sums["first_nonfinite_step"])
  if (bad >= 0).any():
    step = int(bad[bad >= 0].min())
    raise UserError(f"training diverged: the loss is not finite at step {step}; the last "
                    "good checkpoint is kept; lower config.learning_rate or add warmup_epochs")


def check_writable(workdir: workdirs.Workdir) -> None:
  try:
    path = workdir.path
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test.{jax.process_index()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable ({e.strerror or e}); "
                    "choose another --workdir") from None


def _barrier() -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("damaged checkpoint moved aside")


class Run:
  """The mutable side of training: state, epoch sums, histories, checkpoints.

  `history` holds one record of metrics per epoch (deterministic: the same
  config and seed give the same numbers on CPU), `steps` one record of batch
  losses per `log_every_steps` steps (deterministic too; `window` holds the
  losses of the steps since its last record) and `timing` the wall times and
  speeds; all are checkpointed so a resumed run continues them exactly.
  """

  def __init__(self, exp: Experiment, workdir: "str | workdirs.Workdir"):
    self.exp, self.workdir, self.pacing = exp, workdirs.Workdir.of(workdir), exp.pacing
    self.state, self.sums = exp.initial_state, exp.zero_sums()
    self.history, self.timing, self.steps, self.window = [], [], [], []
    self.manager, restored = checkpoint.open_for_training(
        workdir, exp.config.checkpoint.keep, exp.fingerprint, self.state, self.sums,
        is_primary=jax.process_index() == 0, barrier=_barrier,
        upgrade=settings.upgrade_fingerprint, track_best="validation" in exp.splits)
    if restored is not None:
      self.state, self.sums, meta, step = restored
      self.history, self.timing = meta["history"], meta["timing"]
      self.steps, self.window = meta.get("steps", []), meta.get("window", [])
      logging.info("resumed from %s at step %d (epoch %d)", self.manager.directory, step,
                   step // exp.steps_per_epoch)
    self.writer = (metric_writers.MetricWriter(workdir, steps_written=len(self.steps))
                   if jax.process_index() == 0 else None)
    self.checkpoints = str(self.manager.directory)

  @property
  def step(self) -> int:
    return int(self.state.step)

  def train_step(self, state: TrainState, sums: dict, batch: dict):
    return self.exp.train_step(state, sums, batch)

  def batches(self, epoch: int, start_step: int) -> Iterator[dict[str, jax.Array]]:
    return self.exp.device_batches(epoch, start_step)

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait_for_saves(self) -> None:
    self.manager.wait_until_finished()

  def host_sums(self) -> dict:
    """The epoch's running sums, read on the host."""
    return jax.device_get(self.sums)

  def check_space(self) -> None:
    """Refuses (UserError, on every process) to start a checkpoint the disk
    cannot hold, after the save in flight has taken its share."""
    self.manager.wait_until_finished()
    needed = checkpoint.bytes_needed(self.state, self.sums)
    free = checkpoint.free_bytes(self.workdir) if jax.process_index() == 0 else None
    if jax.process_count() > 1:  # process 0 decides, so all stop together (in MiB: int32)
      mib = -1 if free is None else min(free >> 20, 2**31 - 1)
      mib = int(multihost_utils.broadcast_one_to_all(np.array(mib, np.int32)))
      free = None if mib < 0 else mib << 20
    if free is not None and free < needed:
      raise checkpoint.space_error(self.workdir, self.step, needed, free)

  def close(self) -> None:
    """Waits for the save in flight (raising its error, e.g. a full disk) and
    closes the checkpoint manager and the metric writer, the writer even if
    the save failed."""
    try:
      self.manager.wait_until_finished()
      self.manager.close()
    finally:
      if self.writer:
        self.writer.close()

  def save(self, val_accuracy: float | None = None) -> None:
    check_finite(jax.device_get(self.sums))
    self.check_space()
    # The config and class names let `cnn.inference.predictor.load` rebuild the model
    # from the workdir alone.
    meta = {"fingerprint": self.exp.fingerprint, "history": self.history, "timing": self.timing,
            "steps": self.steps, "window": [float(x) for x in jax.device_get(self.window)],
            "config": self.exp.config.to_dict(), "class_names": list(self.exp.class_names)}
    checkpoint.save(self.manager, self.step, self.state, self.sums, meta, val_accuracy)

  def close_window(self) -> None:
    """Turns the batch losses since the last step record into the next one;
    called after `check_finite`, so no record is ever non-finite."""
    self.steps.append(metric_writers.window_record(
        self.step, jax.device_get(self.window), self.exp.learning_rate(self.state)))
    self.window = []
    if self.writer:
      self.writer.write_steps(self.steps)

  def end_epoch(self, epoch: int, train_seconds: float, timed_steps: int, started: float,
                save: bool = True) -> None:
    """Records the epoch (and its validation metrics), starts the next epoch's
    sums, and checkpoints the end of the epoch if `save`."""
    totals = jax.device_get(self.sums)
    check_finite(totals)
    record = {"epoch": epoch + 1, "step": self.step,
              "train_loss": float(totals["loss"] / totals["count"]),
              "train_accuracy": float(totals["correct"] / totals["count"]),
              "learning_rate": self.exp.learning_rate(self.state)}
    if "validation" in self.exp.splits:
      val = self.exp.evaluate(self.state, "validation")
      record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    self.history.append(record)
    self.timing.append({"epoch": epoch + 1, "epoch_time_s": time.perf_counter() - started,
                        "train_time_s": train_seconds,
                        "train_images_per_s": timed_steps * self.exp.config.batch_size
                                              / max(train_seconds, 1e-9)})
    logging.info("epoch %d: %s", epoch + 1, json.dumps(
        {k: round(v, 4) for k, v in record.items() if isinstance(v, float)}))
    self.sums = self.exp.zero_sums()
    if save:
      self.save(record.get("val_accuracy"))
    if self.writer:
      self.writer.write_epoch(self.history, self.timing)


def no_host_sync():
  """The step loop's body between sync points: on GPU/TPU every device-to-
  host read in it is logged, so a per-step host sync (which stalls
  dispatch-ahead and prefetching) cannot creep back in unnoticed. (CPU
  arrays are read without a transfer, so there it logs nothing;
  tests/host_sync_probe.py counts the loop's sync points instead.)"""
  return jax.transfer_guard_device_to_host("log")


def _preempted(run: TrainingRun, step: int) -> Preempted:
  run.wait_for_saves()
  return Preempted(f"stopped by SIGTERM at step {step}: checkpoint saved in "
                   f"{run.checkpoints}; rerun the same command to resume")


def train_epochs(run: TrainingRun, stop_requested: Callable[[], bool]) -> float | None:
  """Trains `run` until its last step, saving the ends of epochs as
  `pacing.every_epochs` says (the last one always) and every
  `pacing.every_steps` steps; returns the first step's compile seconds (None
  if nothing was left to train). Raises Preempted after saving."""
  pace = run.pacing
  step = run.step  # host-side copy: reading state.step would sync every step
  progress = metric_writers.Progress(pace.total_steps, pace.steps_per_epoch, pace.batch_size, step)
  save_due = functools.partial(checkpoint.due, steps_per_epoch=pace.steps_per_epoch,
                               total_steps=pace.total_steps, every_epochs=pace.every_epochs,
                               every_steps=pace.every_steps)
  compile_time = None
  while step < pace.total_steps:
    epoch, offset = divmod(step, pace.steps_per_epoch)
    epoch_start = train_start = time.perf_counter()
    timed_steps, stop = 0, False
    batches = iter(run.batches(epoch, offset))
    while True:
      with no_host_sync():  # steps are dispatched ahead; only sync points wait for them
        batch = next(batches, None)
        if batch is None:
          break
        run.state, run.sums, loss = run.train_step(run.state, run.sums, batch)
        run.window.append(loss)
        step += 1
      if compile_time is None:  # the first step compiles: keep it out of the speed
        jax.block_until_ready(loss)
        train_start = time.perf_counter()
        compile_time = train_start - epoch_start
        progress.reset_clock(step)
      else:
        timed_steps += 1
      at_sync_point = step % pace.log_every_steps == 0 or step % pace.steps_per_epoch == 0
      if step % pace.log_every_steps == 0 or step == pace.total_steps:
        partial = run.host_sums()
        check_finite(partial)
        progress.report(step, partial["loss"] / partial["count"],
                        partial["correct"] / partial["count"])
        run.close_window()
      stop = (preemption.stop_now(stop_requested, at_sync_point)
              or run.reached_preemption(step))
      if step % pace.steps_per_epoch == 0:
        break  # the end of the epoch saves if it is due or stopped
      if stop or save_due(step):
        run.save()
      if stop:
        raise _preempted(run, step)
    jax.block_until_ready(run.sums)  # steps are dispatched ahead: time the work itself
    run.end_epoch(epoch, time.perf_counter() - train_start, timed_steps, epoch_start,
                  save=stop or save_due(step))
    if stop:
      raise _preempted(run, step)
  return compile_time


def final_results(run: Run, compile_time: float | None) -> dict:
  """Test metrics of the last and the best-by-validation checkpoints."""
  exp, config = run.exp, run.exp.config
  best = (run.history[-1] if model_fn.reports_final_model(config.protocol)
          else model_fn.best_epoch(run.history, run.manager.all_steps()))
  last_test = exp.evaluate(run.state, "test")
  best_test = last_test
  if best["step"] != run.step:
    best_state = checkpoint.read(run.workdir, best["step"], state=run.state)["state"]
    best_test = exp.evaluate(best_state, "test")
  return {
      "test_accuracy": best_test["accuracy"], "test_loss": best_test["loss"],
      "test_count": best_test["count"], "best_epoch": best["epoch"],
      "best_val_accuracy": best.get("val_accuracy"),
      "last_test_accuracy": last_test["accuracy"], "last_test_loss": last_test["loss"],
      "train_accuracy": run.history[-1]["train_accuracy"],
      "train_loss": run.history[-1]["train_loss"],
      "num_params": count_params(run.state.params), "epochs": len(run.history),
      "batch_size": config.batch_size, "steps": run.step,
      "wall_time_s": sum(t["epoch_time_s"] for t in run.timing),
      "train_time_s": sum(t.get("train_time_s", 0.0) for t in run.timing),
      "images_per_s": float(np.median([t["train_images_per_s"] for t in run.timing])),
      "compile_time_s": compile_time, "devices": jax.device_count(), "seed": config.seed,
      "protocol": config.protocol,
      "model": config.model, "dataset": config.data.name, "config": config.to_dict(),
  }


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: "str | workdirs.Workdir") -> dict:
  """Trains (resuming from `workdir` if it holds a checkpoint), evaluates the
  last and the best-by-validation checkpoints on the test split and writes
  `results.json`. Returns the results."""
  workdir = workdirs.Workdir.of(workdir)  # the one made for this run; everything else takes it
  check_writable(workdir)
  with workdir_lock.one_trainer(workdir):  # a second trainer on it refuses
    return _train_and_evaluate(Experiment(config), workdir)


def _train_and_evaluate(exp: Experiment, workdir: workdirs.Workdir) -> dict:
  config = exp.config
  run = Run(exp, workdir)
  logging.info("%s; mesh %s", distributed.describe(), dict(exp.mesh.shape))
  backend.warn_if_accelerator_unused(jax.default_backend())
  logging.info("%s on %s: %d params, %d steps/epoch, global batch %d (%d per device)",
               config.model, config.data.name, count_params(run.state.params),
               exp.steps_per_epoch, config.batch_size, config.batch_size // jax.device_count())
  try:
    with preemption.sigterm_flag() as stop_requested:
      compile_time = train_epochs(run, stop_requested)
    run.manager.wait_until_finished()
    results = final_results(run, compile_time)
  finally:
    run.close()
  write_results(workdir, results)
  return results


def write_results(workdir: workdirs.Workdir, results: dict) -> None:
  """`results.json` (written by process 0), and its headline in the log."""
  if jax.process_index() == 0:
    workdir.results.write_text(json.dumps(results, indent=2, default=str) + "\n")
  if results["protocol"] == "paper":
    logging.info("test accuracy %.4f (final model, paper protocol)", results["test_accuracy"])
  else:
    logging.info("test accuracy %.4f (best epoch %d by validation), last %.4f",
                 results["test_accuracy"], results["best_epoch"], results["last_test_accuracy"])
