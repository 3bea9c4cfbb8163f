"""The train/eval steps and the optimiser/schedule builders."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnn import datasets, optim, train
from cnn.errors import UserError
from cnn.models import create_model
from conftest import mnist_train_step
from configs import default


def make_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update(overrides)
  return config


def real_mnist_batch(mnist, n: int) -> dict[str, np.ndarray]:
  images, labels = mnist.load_split(f"train[:{n}]")
  return {"image": images, "label": labels}


def test_loss_falls_on_a_real_mnist_batch(mnist):
  batch = real_mnist_batch(mnist, 64)
  config = make_config(learning_rate=0.05, lr_schedule="constant", num_epochs=1)
  model = create_model("resnet8_v1", num_classes=10, dtype=jnp.float32)
  tx = optim.make_optimizer(config, steps_per_epoch=30)
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
  model = create_model("resnet8_v1", num_classes=10, dtype=jnp.float32)
  state = train.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (28, 28, 1))
  x = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
  labels = np.arange(8, dtype=np.int32)
  mnist = datasets.get_spec("mnist")
  real = train.eval_step(state, {"image": x[:5], "label": labels[:5], "mask": np.ones(5, np.float32)},
                         mnist)
  padded = train.eval_step(state, {"image": x, "label": labels,
                                   "mask": np.array([1] * 5 + [0] * 3, np.float32)}, mnist)
  assert float(padded["count"]) == 5
  np.testing.assert_allclose(float(padded["loss"]), float(real["loss"]), rtol=1e-5)
  assert float(padded["correct"]) == float(real["correct"])


def test_step_schedule_follows_he_et_al():
  schedule = optim.make_lr_schedule(make_config(num_epochs=4), steps_per_epoch=100)
  assert [float(schedule(s)) for s in (0, 199, 200, 299, 300, 399)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_step_boundaries_on_the_same_step_compound():
  """A run too short for its boundaries still gets every decay."""
  schedule = optim.make_lr_schedule(
      make_config(num_epochs=1, lr_boundaries=(0.5, 0.51, 0.75)), steps_per_epoch=10)
  assert float(schedule(9)) == pytest.approx(0.1 * 0.1 ** 3)


def test_cosine_with_warmup():
  schedule = optim.make_lr_schedule(
      make_config(lr_schedule="cosine", warmup_epochs=1.0, num_epochs=5), steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.05)
  assert float(schedule(10)) == pytest.approx(0.1)
  assert float(schedule(50)) == pytest.approx(0.0, abs=1e-6)


def test_reduce_on_plateau_cuts_the_rate_after_patience_epochs():
  config = make_config(lr_schedule="plateau", plateau_patience=2, plateau_factor=0.5)
  tx = optim.make_optimizer(config, steps_per_epoch=3)
  params = {"w": jnp.ones(3)}
  opt_state = tx.init(params)
  scales = []
  for _ in range(6):  # 6 flat epochs of 3 steps
    for _ in range(3):
      _, opt_state = tx.update({"w": jnp.ones(3)}, opt_state, params, value=jnp.float32(1.0))
    scales.append(optim.plateau_scale(opt_state))
  assert scales[0] == 1.0 and scales[-1] < 1.0


def test_unknown_optimizer_and_schedule_list_valid_names():
  with pytest.raises(UserError, match="unknown optimizer 'sgdd'.*adam, adamw, sgd"):
    optim.make_optimizer(make_config(optimizer="sgdd"), 10)
  with pytest.raises(UserError, match="unknown lr_schedule 'triangle'.*cosine, linear"):
    optim.make_lr_schedule(make_config(lr_schedule="triangle"), 10)


def test_best_epoch_selects_on_validation_not_test():
  history = [{"epoch": 1, "step": 10, "val_accuracy": 0.5},
             {"epoch": 2, "step": 20, "val_accuracy": 0.7},
             {"epoch": 3, "step": 30, "val_accuracy": 0.7}]
  assert train.best_epoch(history)["epoch"] == 2


def test_bfloat16_compute_keeps_float32_params_and_learns(mnist):
  batch = real_mnist_batch(mnist, 32)
  config = make_config(learning_rate=0.05, lr_schedule="constant", num_epochs=1)
  model = create_model("resnet8_v1", num_classes=10, dtype=jnp.bfloat16)
  state = train.create_train_state(model, optim.make_optimizer(config, 10), jax.random.key(0),
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
