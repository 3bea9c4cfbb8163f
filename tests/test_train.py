"""The train/eval steps and the optimiser/schedule builders."""
import functools

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnn import datasets, kernels, model_fn, optim, train
from cnn.errors import UserError
from cnn.models import create_model
from cnn.models.layers import LayerSpec
from conftest import lr_schedule, make_tx, mnist_train_step
from configs import default


def make_config(overrides=None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update_from_flattened_dict(overrides or {})
  return config


def real_mnist_batch(mnist, n: int) -> dict[str, np.ndarray]:
  images, labels = mnist.load_split(f"train[:{n}]")
  return {"image": images, "label": labels}


def test_loss_falls_on_a_real_mnist_batch(mnist):
  batch = real_mnist_batch(mnist, 64)
  config = make_config({"learning_rate": 0.05, "schedule.name": "constant", "num_epochs": 1})
  model = create_model("resnet8_v1", num_classes=10)
  tx = make_tx(config, steps_per_epoch=30)
  state = train.create_train_state(model, tx, jax.random.key(0), (28, 28, 1))
  step = jax.jit(mnist_train_step())
  sums, losses = train.zero_sums(), []
  for _ in range(30):
    state, sums, loss = step(state, sums, batch)
    losses.append(float(loss))
  assert losses[-1] < 0.3 * losses[0], losses
  assert int(state.step) == 30 and float(sums["count"]) == 30 * 64
  assert not jax.tree.all(jax.tree.map(  # BatchNorm running statistics moved
      lambda a, b: bool(jnp.all(a == b)), state.batch_stats,
      train.create_train_state(model, tx, jax.random.key(0), (28, 28, 1)).batch_stats))


def test_eval_step_ignores_padding():
  model = create_model("resnet8_v1", num_classes=10)
  state = train.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (28, 28, 1))
  x = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
  labels = np.arange(8, dtype=np.int32)
  mnist = datasets.get_spec("mnist")
  real = train.eval_step(state, {
      "image": x[:5],
      "label": labels[:5],
      "mask": np.ones(5, np.float32)
  }, mnist)
  padded = train.eval_step(state, {"image": x, "label": labels,
                                   "mask": np.array([1] * 5 + [0] * 3, np.float32)}, mnist)
  assert float(padded["count"]) == 5
  np.testing.assert_allclose(float(padded["loss"]), float(real["loss"]), rtol=1e-5)
  assert float(padded["correct"]) == float(real["correct"])


def test_the_test_split_is_evaluated_at_full_float32_precision():
  """TEST_PRECISION reaches every matmul and convolution the test evaluation
  traces (a GPU would otherwise run them on TF32, a TPU in bfloat16 passes,
  and the recorded test accuracy would not be the weights' anywhere else);
  the other evaluations keep the backend's default."""
  layers = default.get_config().layers
  layers.conv_algorithm = "xla"  # convolutions as XLA ops, whose precision the jaxpr shows
  model = model_fn.build("resnet8_v1", {}, layers, num_classes=10)
  state = train.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (28, 28, 1))
  batch = {"image": np.zeros((4, 28, 28, 1), np.uint8), "label": np.zeros(4, np.int32),
           "mask": np.ones(4, np.float32)}
  mnist = datasets.get_spec("mnist")
  traced = {precision: str(jax.make_jaxpr(functools.partial(
      train.eval_step, spec=mnist, precision=precision))(state, batch))
            for precision in (train.TEST_PRECISION, None)}
  ops = traced[None].count("conv_general_dilated[") + traced[None].count("dot_general[")
  assert ops >= 8  # resnet8: 7 convolutions and the classifier's matmul
  assert traced[train.TEST_PRECISION].count("precision=(Precision.HIGHEST, Precision.HIGHEST)") \
      == ops
  assert "HIGHEST" not in traced[None]


def test_step_schedule_follows_he_et_al():
  schedule = lr_schedule(make_config({"num_epochs": 4}), steps_per_epoch=100)
  assert [float(schedule(s)) for s in (0, 199, 200, 299, 300, 399)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_step_boundaries_on_the_same_step_compound():
  """A run too short for its boundaries still gets every decay."""
  schedule = lr_schedule(
      make_config({"num_epochs": 1, "schedule.boundaries": (0.5, 0.51, 0.75)}), steps_per_epoch=10)
  assert float(schedule(9)) == pytest.approx(0.1 * 0.1 ** 3)


def test_cosine_with_warmup():
  schedule = lr_schedule(
      make_config({
          "schedule.name": "cosine",
          "schedule.warmup_epochs": 1.0,
          "num_epochs": 5
      }),
      steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.05)
  assert float(schedule(10)) == pytest.approx(0.1)
  assert float(schedule(50)) == pytest.approx(0.0, abs=1e-6)


def test_reduce_on_plateau_cuts_the_rate_after_patience_epochs():
  config = make_config({
      "schedule.name": "plateau",
      "schedule.plateau_patience": 2,
      "schedule.plateau_factor": 0.5
  })
  tx = make_tx(config, steps_per_epoch=3)
  params = {"w": jnp.ones(3)}
  opt_state = tx.init(params)
  scales = []
  for _ in range(6):  # 6 flat epochs of 3 steps
    for _ in range(3):
      _, opt_state = tx.update({"w": jnp.ones(3)}, opt_state, params, value=jnp.float32(1.0))
    scales.append(optim.plateau_scale(opt_state))
  assert scales[0] == 1.0 and scales[-1] < 1.0


def test_unknown_optimizer_and_schedule_list_valid_names():
  with pytest.raises(
      UserError, match="unknown config.optim.name 'sgdd'.*adam, adamw, lamb, lars, lion, sgd"):
    make_tx(make_config({"optim.name": "sgdd"}), 10)
  with pytest.raises(UserError, match="unknown config.schedule.name 'triangle'.*cosine, linear"):
    lr_schedule(make_config({"schedule.name": "triangle"}), 10)


def test_best_epoch_selects_on_validation_not_test():
  history = [{"epoch": 1, "step": 10, "val_accuracy": 0.5},
             {"epoch": 2, "step": 20, "val_accuracy": 0.7},
             {"epoch": 3, "step": 30, "val_accuracy": 0.7}]
  assert model_fn.best_epoch(history)["epoch"] == 2


def test_bfloat16_compute_keeps_float32_params_and_learns(mnist):
  batch = real_mnist_batch(mnist, 32)
  config = make_config({"learning_rate": 0.05, "schedule.name": "constant", "num_epochs": 1})
  spec = kernels.for_backend(LayerSpec(dtype=jnp.bfloat16), jax.default_backend())
  model = create_model("resnet8_v1", num_classes=10, spec=spec)
  state = train.create_train_state(model, make_tx(config, 10), jax.random.key(0),
                                   (28, 28, 1))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  hidden = jax.eval_shape(lambda: model.apply(
      {"params": state.params, "batch_stats": state.batch_stats},
      batch["image"].astype(np.float32), train=False,
      capture_intermediates=True, mutable=["intermediates"]))[1]
  conv_outputs = [x for p, x in jax.tree_util.tree_leaves_with_path(hidden)
                  if "stem_conv" in jax.tree_util.keystr(p)]
  assert conv_outputs and all(x.dtype == jnp.bfloat16 for x in conv_outputs)
  step = jax.jit(mnist_train_step())
  sums, losses = train.zero_sums(), []
  for _ in range(15):
    state, sums, loss = step(state, sums, batch)
    losses.append(float(loss))
  assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}


class LinearProbe(flax.linen.Module):
  """A BatchNorm-free model (softmax regression) with the train step's
  interface, so gradient accumulation can equal the large batch exactly."""

  @flax.linen.compact
  def __call__(self, x, train: bool):
    self.variable("batch_stats", "unused", jnp.zeros, ())
    return flax.linen.Dense(10)(x.reshape(x.shape[0], -1))


def _linear_state(config, steps_per_epoch=10):
  tx = make_tx(config, steps_per_epoch)
  return train.create_train_state(LinearProbe(), tx, jax.random.key(0), (28, 28, 1))


def test_accumulated_micro_batches_equal_the_large_batch(mnist):
  """grad_accum_steps=4 (optax.MultiSteps over 4 micro-batches in one step)
  gives the update of the whole batch, to float32 rounding, over 3 steps."""
  batch = real_mnist_batch(mnist, 64)
  states = {}
  for k in (1, 4):
    config = make_config({
        "optim.grad_accum_steps": k,
        "optim.nesterov": True,
        "optim.weight_decay": 5e-4,
        "schedule.name": "cosine",
        "num_epochs": 1
    })
    state, sums = _linear_state(config), train.zero_sums()
    step = jax.jit(mnist_train_step(accum_steps=k))
    for _ in range(3):
      state, sums, loss = step(state, sums, batch)
    states[k] = (state, sums)
  assert int(states[4][0].step) == 3  # steps count global batches
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
               states[1][0].params, states[4][0].params)
  np.testing.assert_allclose(states[1][1]["loss"], states[4][1]["loss"], rtol=1e-5)
  assert float(states[1][1]["correct"]) == float(states[4][1]["correct"])
  assert float(states[4][1]["count"]) == 3 * 64


def test_accumulation_trains_a_batchnorm_resnet_like_the_whole_batch(mnist):
  """With BatchNorm each micro-batch normalises over itself (as gradient
  accumulation does in any framework), so the numbers differ slightly from
  the whole batch's; the loss curve follows it."""
  batch = real_mnist_batch(mnist, 64)
  curves = {}
  for k in (1, 2):
    config = make_config({
        "optim.grad_accum_steps": k,
        "learning_rate": 0.05,
        "schedule.name": "constant",
        "num_epochs": 1
    })
    model = create_model("resnet8_v1", num_classes=10)
    state = train.create_train_state(model, make_tx(config, 30),
                                     jax.random.key(0), (28, 28, 1))
    step = jax.jit(mnist_train_step(accum_steps=k))
    sums, curves[k] = train.zero_sums(), []
    for _ in range(15):
      state, sums, loss = step(state, sums, batch)
      curves[k].append(float(loss))
  assert curves[2][-1] < 0.8 * curves[2][0], curves[2]
  np.testing.assert_allclose(curves[2], curves[1], rtol=0.05)


def test_sam_step_takes_the_gradient_at_the_ascent_point(mnist):
  """One SAM step (sam_rho=0.05, plain SGD) is w - lr * (g(w + rho g/|g|) + wd w)."""
  batch = real_mnist_batch(mnist, 32)
  config = make_config({
      "optim.sam_rho": 0.05,
      "optim.momentum": 0.0,
      "optim.weight_decay": 1e-3,
      "learning_rate": 0.1,
      "schedule.name": "constant",
      "num_epochs": 1
  })
  state = _linear_state(config)
  new, _, _ = jax.jit(mnist_train_step(sam=True))(state, train.zero_sums(), batch)
  mnist_spec = datasets.get_spec("mnist")
  x = (batch["image"].astype(np.float32) / 255 - mnist_spec.mean[0]) / mnist_spec.std[0]

  def loss(params):
    logits = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                            train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  g = jax.grad(loss)(state.params)
  norm = optax.tree.norm(g)
  ascent = jax.tree.map(lambda w, gi: w + 0.05 * gi / norm, state.params, g)
  g_adv = jax.grad(loss)(ascent)
  expected = jax.tree.map(lambda w, ga: w - 0.1 * (ga + 1e-3 * w), state.params, g_adv)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               new.params, expected)
  plain = jax.tree.map(lambda w, gi: w - 0.1 * (gi + 1e-3 * w), state.params, g)
  assert not np.allclose(new.params["Dense_0"]["kernel"], plain["Dense_0"]["kernel"],
                         atol=1e-6)
