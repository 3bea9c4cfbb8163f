"""The speedrun's switches: Cutout, mixup, the parameter EMA, flip test-time
augmentation and the one-cycle ("linear") schedule, each checked against its
definition on small real or random data."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow as tf

from cnn import batching, datasets, input_pipeline, optim, train
from cnn.config_validation import validate_config
from cnn.errors import UserError
from cnn.models import create_model
from configs import default


def make_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update(overrides)
  return config


def test_cutout_mask_zeroes_one_square_per_image_clipped_at_the_border():
  mask = input_pipeline.cutout_mask(
      input_pipeline.draw_cutout_centres(tf.constant([3, 4], tf.int64), 256, 32, 32), 32, 32, 8
  ).numpy()
  assert mask.shape == (256, 32, 32, 1) and set(np.unique(mask)) == {0.0, 1.0}
  holes = (mask[..., 0] == 0).sum(axis=(1, 2))
  assert holes.max() == 64 and holes.min() >= 16  # whole 8x8 inside, or a clipped corner
  assert (holes < 64).any()  # some centres near the border
  for image in mask[..., 0] == 0:  # each hole is one rectangle
    rows, cols = np.nonzero(image)
    assert len(rows) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
  again = input_pipeline.cutout_mask(
      input_pipeline.draw_cutout_centres(tf.constant([3, 4], tf.int64), 256, 32, 32), 32, 32, 8
  ).numpy()
  np.testing.assert_array_equal(mask, again)


def test_cutout_only_masks_the_batches_it_would_have_made(cifar10):
  images, labels = cifar10.load_split("train[:256]")
  spec = datasets.get_spec("cifar10")
  kwargs = dict(spec=spec, shard=batching.Shard(64, 0, 1), seed=0, epoch=1)
  plain = list(input_pipeline.train_batches(images, labels, **kwargs))
  cut = list(input_pipeline.train_batches(images, labels, cutout=16, **kwargs))
  for p, c in zip(plain, cut):
    np.testing.assert_array_equal(p["label"], c["label"])
    same = np.all(p["image"] == c["image"], axis=-1)
    assert np.all(c["image"][~same] == 0)  # changed pixels are zero: the mean after normalising
    assert 0.05 < 1 - same.mean() < 0.3  # a 16x16 hole is a quarter of the image at most


@pytest.mark.slow
def test_mixup_blends_each_image_with_its_mirror_and_the_loss_follows():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4, 4, 1)), jnp.float32)
  mixed, lam = train.mixup(x, jax.random.key(0), 0.4)
  assert 0.0 <= float(lam) <= 1.0
  np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], rtol=1e-6)

  model = create_model("resnet8_v1", num_classes=10, dtype=jnp.float32)
  tx = optim.make_optimizer(make_config(lr_schedule="constant"), steps_per_epoch=10)
  state = train.create_train_state(model, tx, jax.random.key(0), (28, 28, 1))
  batch = {"image": np.random.default_rng(1).normal(size=(8, 28, 28, 1)).astype(np.float32),
           "label": np.arange(8, dtype=np.int32)}
  _, _, loss = train.train_step(state, train.zero_sums(), batch, jax.random.key(1), 0.0, 0.4)
  # the same loss by hand, from the key the step derives
  rng = jax.random.fold_in(jax.random.key(1), 0)
  rng, mix_key = jax.random.split(rng)
  images, lam = train.mixup(jnp.asarray(batch["image"]), mix_key, 0.4)
  logits, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images,
                          train=True, mutable=["batch_stats"])
  ce = optax.softmax_cross_entropy_with_integer_labels
  expected = jnp.mean(lam * ce(logits, batch["label"]) + (1 - lam) * ce(logits, batch["label"][::-1]))
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)


def test_ema_averages_params_and_batch_stats_and_is_what_evaluation_uses():
  model = create_model("resnet8_v1", num_classes=10, dtype=jnp.float32)
  tx = optax.sgd(0.1)
  state = train.create_train_state(model, tx, jax.random.key(0), (28, 28, 1), ema=True)
  assert train.create_train_state(model, tx, jax.random.key(0), (28, 28, 1)).ema == {}
  batch = {"image": np.random.default_rng(1).normal(size=(8, 28, 28, 1)).astype(np.float32),
           "label": np.arange(8, dtype=np.int32), "mask": np.ones(8, np.float32)}
  expected = {"params": state.params, "batch_stats": state.batch_stats}
  for step in range(3):
    state, _, _ = train.train_step(state, train.zero_sums(), batch, jax.random.key(1), 0.0,
                                   ema_decay=0.9)
    d = min(0.9, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25: the warm-up caps the decay
    expected = jax.tree.map(lambda e, x: d * e + (1 - d) * x, expected,
                            {"params": state.params, "batch_stats": state.batch_stats})
  jax.tree.map(lambda e, x: np.testing.assert_allclose(e, x, rtol=1e-5, atol=1e-7),
               state.ema, expected)
  assert not np.allclose(state.ema["batch_stats"]["stem_bn"]["mean"],
                         state.batch_stats["stem_bn"]["mean"])
  ema_only = state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"],
                           ema={})
  np.testing.assert_allclose(train.eval_step(state, batch)["loss"],
                             train.eval_step(ema_only, batch)["loss"], rtol=1e-6)


def test_ema_decay_warms_up_then_stays_at_the_configured_value():
  decays = [float(train.ema_decay_at(jnp.asarray(t), 0.99)) for t in (0, 10, 100, 989, 5000)]
  np.testing.assert_allclose(decays, [0.1, 11 / 20, 101 / 110, 0.99, 0.99], rtol=1e-6)


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
  model = create_model("resnet8_v1", num_classes=10, dtype=jnp.float32)
  state = train.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (28, 28, 1))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 28, 28, 1)), jnp.float32)
  plain = train.eval_logits(state, x, flip=False)
  mirrored = train.eval_logits(state, x[:, :, ::-1], flip=False)
  np.testing.assert_allclose(train.eval_logits(state, x, flip=True), (plain + mirrored) / 2,
                             rtol=1e-5, atol=1e-6)
  symmetric = x + x[:, :, ::-1]
  np.testing.assert_allclose(train.eval_logits(state, symmetric, flip=True),
                             train.eval_logits(state, symmetric, flip=False), rtol=1e-5, atol=1e-5)


def test_linear_schedule_is_one_cycle_with_warmup():
  schedule = optim.make_lr_schedule(
      make_config(lr_schedule="linear", learning_rate=0.4, warmup_epochs=5, num_epochs=24),
      steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(50)), 0.4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(145)), 0.2, rtol=1e-5)
  assert float(schedule(240)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("key, value, message", [
    ("cutout", -1, "cutout=-1 must be >= 0"),
    ("mixup_alpha", -0.5, "mixup_alpha=-0.5 must be >= 0"),
    ("ema_decay", 1.0, r"ema_decay=1.0 must be in \[0, 1\)"),
])
def test_bad_regulariser_values_are_refused(key, value, message):
  with pytest.raises(UserError, match=message):
    validate_config(make_config(**{key: value}))
