"""One speedrun: airbench94_muon's recipe in JAX, timed as the record is.

A run trains `CifarNet` for 8 epochs of batch 2000 (200 steps) on the 50,000
training images held on the device: per epoch one jitted call augments the
whole split and orders it, then one jitted step per batch, dispatched ahead
of the device (a `lax.scan` over an epoch's steps ran 25x slower on XLA:CPU),
then evaluates the 10,000 test images with
translate + flip test-time augmentation. Label smoothing 0.2, the loss summed
over the batch; float16 compute (airbench's half precision) with float32
BatchNorm, as airbench's, and float32 parameters and optimiser state (airbench
stores them in float16: docs/experiments.md).

Timing follows airbench: the clock runs over the whitening layer's fit, the
epochs and the test-time-augmented evaluation, and stops only after
`jax.block_until_ready` of their results; compilation is done before the
clock starts (ahead of time, `jit(...).lower(...).compile()`) and reported
apart, as airbench warms its compiled model up before timing.
"""
import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn import kernels
from cnn.augment import normalize
from cnn.datasets import DatasetSpec, get_spec
from cnn.models.layers import LayerSpec
from cnn.speedrun import data, net, optim
from cnn.speedrun import profile as kernel_profile

LABEL_SMOOTHING = 0.2
WHITEN_IMAGES = 5000  # the training images the whitening layer is fitted on


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The knobs of a run; the defaults are airbench94_muon's."""
  batch_size: int = 2000
  epochs: int = 8
  translate: int = 2
  widths: tuple[int, ...] = net.WIDTHS
  dtype: str = "float16"  # airbench's; bfloat16 keeps 3 fewer mantissa bits
  whiten_bias_epochs: int = 3
  eval_batch_size: int = 2000


def layer_spec(dtype: Any, backend: str | None = None) -> LayerSpec:
  """The net's layers in compute dtype `dtype`: flax's (XLA's) on GPUs and
  TPUs; on the CPU backend (default: JAX's) the kernels `model_fn.build`
  gives every model there (oneDNN's convolutions and BatchNorm where built,
  in float32 and bfloat16; the reshape max pool). The same parameters and
  values under either."""
  spec = dataclasses.replace(net.LAYERS, dtype=dtype)
  return kernels.for_backend(spec, backend or jax.default_backend(), fusion_barrier=False)


def loss_fn(logits: jnp.ndarray, labels: jnp.ndarray, num_classes: int) -> jnp.ndarray:
  """Cross-entropy with label smoothing 0.2, summed over the batch (not averaged)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), LABEL_SMOOTHING)
  return optax.softmax_cross_entropy(logits, targets).sum()


def tta_logits(apply: Callable, variables: dict, images: jnp.ndarray) -> jnp.ndarray:
  """airbench's TTA (level 2): half the mean logits of the image and its mirror,
  half the same for the image translated one pixel up-left and one down-right
  (reflect padding)."""
  def mirrored(x):
    return 0.5 * apply(variables, x, train=False) + 0.5 * apply(variables, x[:, :, ::-1],
                                                                 train=False)
  h, w = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  shifted = (mirrored(padded[:, :h, :w]) + mirrored(padded[:, 2:h + 2, 2:w + 2])) / 2
  return 0.5 * mirrored(images) + 0.5 * shifted


class Speedrun:
  """The compiled pieces of a recipe for one training and test split; `run(seed)`
  trains and evaluates one seed."""

  def __init__(self, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
               recipe: Recipe = Recipe(), spec: DatasetSpec = get_spec("cifar10")):
    self.recipe, self.num_classes = recipe, spec.num_classes
    self.model = net.CifarNet(spec.num_classes, recipe.widths, layer_spec(recipe.dtype))
    self.train_images = jax.device_put(normalize(train[0], spec.mean, spec.std))
    self.train_labels = jax.device_put(jnp.asarray(train[1], jnp.int32))
    self.test_images = jax.device_put(normalize(test[0], spec.mean, spec.std))
    self.test_labels = np.asarray(test[1])
    self.steps_per_epoch = len(train[1]) // recipe.batch_size
    self.total_steps = recipe.epochs * self.steps_per_epoch
    self.tx = optim.make_optimizer(recipe.batch_size, self.steps_per_epoch, self.total_steps,
                                   whiten_bias_epochs=recipe.whiten_bias_epochs)
    self.compile_s = self._compile()

  def init(self, key: jax.Array) -> tuple[dict, Any]:
    """Fresh variables (the whitening kernel still zero) and optimiser state."""
    variables = self.model.init(key, self.train_images[:2], train=False)
    return variables, self.tx.init(variables["params"])

  # The jitted functions take the data as arguments: a closed-over array
  # would be a constant of the compiled program, and XLA folds constants at
  # compile time (the whitening fit would then be done before the clock).

  def _fit_whitening(self, variables: dict, train_images: jax.Array) -> dict:
    kernel = net.whitening_kernel(train_images[:WHITEN_IMAGES])
    return {**variables, "whiten": {"kernel": kernel.astype(variables["whiten"]["kernel"].dtype)}}

  def _epoch_data(self, train_images, epoch, key):
    """The split as epoch `epoch` sees it (flipped, translated) and its batches' indices."""
    mask_key, shift_key, order_key = jax.random.split(key, 3)
    count = len(train_images)
    images = data.epoch_images(train_images, data.flip_mask(mask_key, count), epoch,
                               jax.random.fold_in(shift_key, epoch), self.recipe.translate)
    order = jax.random.permutation(jax.random.fold_in(order_key, epoch), count)
    # In the compute dtype already: each step gathers half the bytes in float16,
    # and the network's first cast is then a no-op (the same numbers).
    return images.astype(self.model.dtype), order[:self.steps_per_epoch * self.recipe.batch_size].reshape(
        self.steps_per_epoch, self.recipe.batch_size)

  def _step(self, params, stats, opt_state, whiten, images, labels, order, i):
    """Step `i` of an epoch, on the batch `images[order[i]]`; returns the new state and
    the summed loss."""
    indices = order[i]
    x, y = images[indices], labels[indices]

    def loss(p):
      logits, updates = self.model.apply({"params": p, "batch_stats": stats, "whiten": whiten},
                                         x, train=True, mutable=["batch_stats"])
      return loss_fn(logits, y, self.num_classes), updates["batch_stats"]

    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = self.tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, value

  def _evaluate(self, variables, test_images):
    batches = test_images.reshape(-1, self.recipe.eval_batch_size, *test_images.shape[1:])
    return jax.lax.map(lambda x: tta_logits(self.model.apply, variables, x), batches).reshape(
        -1, self.num_classes)

  def _compile(self) -> float:
    """Compiles the epoch and the evaluation ahead of time; returns the seconds."""
    start = time.perf_counter()
    variables, opt_state = self.init(jax.random.key(0))
    self.data_fn = jax.jit(self._epoch_data).lower(self.train_images, 0,
                                                   jax.random.key(0)).compile()
    images, order = self.data_fn(self.train_images, 0, jax.random.key(0))
    self.step_fn = jax.jit(self._step, donate_argnums=(0, 1, 2)).lower(
        variables["params"], variables["batch_stats"], opt_state, variables["whiten"], images,
        self.train_labels, order, 0).compile()
    self.eval_fn = jax.jit(self._evaluate).lower(variables, self.test_images).compile()
    self.fit_fn = jax.jit(self._fit_whitening).lower(variables, self.train_images).compile()
    return time.perf_counter() - start

  def _start(self, seed: int) -> tuple:
    """Seed `seed`'s fresh variables, optimiser state (ready on the device:
    outside the clock) and data key."""
    init_key, data_key = jax.random.split(jax.random.key(seed))
    return (*jax.block_until_ready(self.init(init_key)), data_key)

  def _train(self, variables, opt_state, data_key, phases: dict | None = None):
    """Fits the whitening layer, trains every epoch and evaluates; returns
    (variables, logits, last loss) as dispatched. With
    `phases` each phase is waited for and its seconds added there: "fit",
    "data", "steps" (the epochs' steps, done), "dispatch" (the host's time
    to enqueue them, before waiting) and "eval"."""
    clock = time.perf_counter

    def phase(name, start, value):
      if phases is not None:
        jax.block_until_ready(value)
        phases[name] = phases.get(name, 0.0) + clock() - start
      return value

    variables = phase("fit", clock(), self.fit_fn(variables, self.train_images))
    params, stats, whiten = variables["params"], variables["batch_stats"], variables["whiten"]
    for epoch in range(self.recipe.epochs):
      images, order = phase("data", clock(), self.data_fn(self.train_images, epoch, data_key))
      start = clock()
      for i in range(self.steps_per_epoch):  # one dispatch per step, ahead of the device
        params, stats, opt_state, loss = self.step_fn(params, stats, opt_state, whiten, images,
                                                      self.train_labels, order, i)
      if phases is not None:
        phases["dispatch"] = phases.get("dispatch", 0.0) + clock() - start
      phase("steps", start, (params, stats, opt_state))
    variables = {"params": params, "batch_stats": stats, "whiten": whiten}
    logits = phase("eval", clock(), self.eval_fn(variables, self.test_images))
    return variables, logits, loss

  def run(self, seed: int) -> dict:
    """Trains and evaluates seed `seed`; the clock covers the whitening fit, every
    epoch and the evaluation, each finished on the device before it stops."""
    started = self._start(seed)
    start = time.perf_counter()
    variables, logits, loss = self._train(*started)
    jax.block_until_ready((variables, logits))
    seconds = time.perf_counter() - start
    accuracy = float((np.asarray(logits).argmax(-1) == self.test_labels).mean())
    return {"seed": seed, "test_accuracy": accuracy, "train_seconds": seconds,
            "last_loss": float(loss) / self.recipe.batch_size}

  def breakdown(self, seed: int) -> dict:
    """Where a run's time goes: seed `seed` once more (not a timed run), each
    phase waited for. `dispatch_s` close to `steps_s` means the host's
    dispatch, not the device, sets the steps' pace."""
    phases: dict[str, float] = {}
    self._train(*self._start(seed), phases)
    found = {f"{k}_s": round(v, 4) for k, v in phases.items()}
    found["total_s"] = round(sum(v for k, v in phases.items() if k != "dispatch"), 4)
    found["step_ms"] = round(1000 * phases["steps"] / self.total_steps, 3)
    found["train_images_per_s"] = round(
        self.total_steps * self.recipe.batch_size / phases["steps"], 1)
    return found

  def profile(self, seed: int, trace_dir: str, top: int = 15) -> dict:
    """Device time by kernel: seed `seed` once more (not a timed run) under
    `jax.profiler.trace(trace_dir)`, read back by cnn/speedrun/profile.py."""
    started = self._start(seed)
    with jax.profiler.trace(trace_dir):
      variables, logits, _ = self._train(*started)
      jax.block_until_ready((variables, logits))
    return {"seed": seed, **kernel_profile.read_trace(trace_dir, top)}
