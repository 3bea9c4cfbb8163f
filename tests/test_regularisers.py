"""The speedrun's switches: mixup in the train step, the parameter EMA, flip
test-time augmentation and the one-cycle ("linear") schedule, each checked
against its definition on small real or random data (the augmentations
themselves: test_augment.py)."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnn import augment, datasets, model_fn, train
from cnn.config_validation import validate_config
from cnn.errors import UserError
from cnn.models import create_model
from conftest import lr_schedule, make_tx, mnist_train_step
from configs import default


def make_config(overrides=None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update_from_flattened_dict(overrides or {})
  return config


@pytest.mark.slow
def test_mixup_in_the_train_step_is_the_mixed_loss_of_the_paper():
  """The step's loss with mixup equals lam * CE(own label) + (1 - lam) *
  CE(partner's label) on the mixed images, from the keys the step derives."""
  model = create_model("resnet8_v1", num_classes=10)
  tx = make_tx(make_config({"schedule.name": "constant"}), steps_per_epoch=10)
  state = train.create_train_state(model, tx, jax.random.key(0), (28, 28, 1))
  batch = {"image": np.random.default_rng(1).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8),
           "label": np.arange(8, dtype=np.int32)}
  mnist = datasets.get_spec("mnist")
  mixing_augment = functools.partial(augment.augment_batch, spec=mnist,
                                     settings=augment.settings(geometry="none", mixup_alpha=0.4))
  _, _, loss = mnist_train_step(augment=mixing_augment)(state, train.zero_sums(), batch)
  key = jax.random.fold_in(augment.step_key(0, 0, 0), augment.STAGES["mixing"].stream)
  _, mixup_key, _ = jax.random.split(key, 3)
  lam = jax.random.beta(mixup_key, 0.4, 0.4)
  x = augment.normalize(batch["image"], mnist.mean, mnist.std)
  images = lam * x + (1 - lam) * x[::-1]
  logits, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images,
                          train=True, mutable=["batch_stats"])
  ce = optax.softmax_cross_entropy_with_integer_labels
  expected = jnp.mean(lam * ce(logits, batch["label"]) +
                      (1 - lam) * ce(logits, batch["label"][::-1]))
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)


def test_ema_averages_params_and_batch_stats_and_is_what_evaluation_uses():
  model = create_model("resnet8_v1", num_classes=10)
  tx = optax.sgd(0.1)
  state = train.create_train_state(model, tx, jax.random.key(0), (28, 28, 1), ema=True)
  assert train.create_train_state(model, tx, jax.random.key(0), (28, 28, 1)).ema == {}
  batch = {"image": np.random.default_rng(1).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8),
           "label": np.arange(8, dtype=np.int32), "mask": np.ones(8, np.float32)}
  expected = {"params": state.params, "batch_stats": state.batch_stats}
  step_fn = mnist_train_step(ema_decay=0.9)
  for step in range(3):
    state, _, _ = step_fn(state, train.zero_sums(), batch)
    d = min(0.9, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25: the warm-up caps the decay
    expected = jax.tree.map(lambda e, x: d * e + (1 - d) * x, expected,
                            {"params": state.params, "batch_stats": state.batch_stats})
  jax.tree.map(lambda e, x: np.testing.assert_allclose(e, x, rtol=1e-5, atol=1e-7),
               state.ema, expected)
  assert not np.allclose(state.ema["batch_stats"]["stem_bn"]["mean"],
                         state.batch_stats["stem_bn"]["mean"])
  ema_only = state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"],
                           ema={})
  mnist = datasets.get_spec("mnist")
  np.testing.assert_allclose(train.eval_step(state, batch, mnist)["loss"],
                             train.eval_step(ema_only, batch, mnist)["loss"], rtol=1e-6)


def test_ema_decay_warms_up_then_stays_at_the_configured_value():
  decays = [float(train.ema_decay_at(jnp.asarray(t), 0.99)) for t in (0, 10, 100, 989, 5000)]
  np.testing.assert_allclose(decays, [0.1, 11 / 20, 101 / 110, 0.99, 0.99], rtol=1e-6)


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
  model = create_model("resnet8_v1", num_classes=10)
  state = train.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (28, 28, 1))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 28, 28, 1)), jnp.float32)
  logits = lambda images, flip: model_fn.logits(  # noqa: E731
      state.apply_fn, state.eval_variables, images, (0.5,), (0.25,), flip)
  plain = logits(x, flip=False)
  mirrored = logits(x[:, :, ::-1], flip=False)
  np.testing.assert_allclose(logits(x, flip=True), (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
  symmetric = x + x[:, :, ::-1]
  np.testing.assert_allclose(logits(symmetric, flip=True), logits(symmetric, flip=False),
                             rtol=1e-5, atol=1e-5)


def test_linear_schedule_is_one_cycle_with_warmup():
  schedule = lr_schedule(
      make_config({
          "schedule.name": "linear",
          "learning_rate": 0.4,
          "schedule.warmup_epochs": 5,
          "num_epochs": 24
      }),
      steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(50)), 0.4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(145)), 0.2, rtol=1e-5)
  assert float(schedule(240)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("key, value, message", [
    ("augment.cutout", -1, "augment.cutout=-1 must be >= 0"),
    ("augment.mixup_alpha", -0.5, "augment.mixup_alpha=-0.5 must be >= 0"),
    ("optim.ema_decay", 1.0, r"optim.ema_decay=1.0 must be in \[0, 1\)"),
])
def test_bad_regulariser_values_are_refused(key, value, message):
  with pytest.raises(UserError, match=message):
    validate_config(make_config({key: value}))
