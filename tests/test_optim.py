"""cnn/optim.py: every optimiser name, the decay masks, gradient clipping, SAM,
gradient accumulation (MultiSteps) and reduce-on-plateau inside the wrappers."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnn import optim
from cnn.errors import UserError
from configs import default
from conftest import lr_schedule, make_tx


def make_config(overrides=None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update_from_flattened_dict({"schedule.name": "constant", "num_epochs": 1,
                                     **(overrides or {})})
  return config


def least_squares(seed: int = 0, n: int = 8):
  """A linear model y = x w + b and its mean squared error."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, 4)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.ones(3)}

  def loss(params, x=x, y=y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)
  return params, loss, x, y


def run(tx, params, loss, steps: int):
  """`steps` full-batch updates, jitted; returns the final params."""
  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state
  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params


RATES = {"sgd": 0.05, "adam": 0.05, "adamw": 0.05, "lars": 0.05, "lamb": 0.05, "lion": 0.01}


def test_every_optimizer_has_a_test_rate():
  assert set(RATES) == set(optim.OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_every_optimizer_reduces_a_least_squares_loss(name):
  params, loss, _, _ = least_squares()
  tx = make_tx(make_config({"optim.name": name, "learning_rate": RATES[name]}), 10)
  assert float(loss(run(tx, params, loss, 20))) < 0.9 * float(loss(params))


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_lars_and_lamb_leave_1d_params_undecayed_and_unadapted(name):
  params, loss, _, _ = least_squares()
  params = {"w": params["w"], "b": jnp.full(3, 5.0)}  # a big bias: decay would show
  grads = jax.grad(loss)(params)

  def first_update(weight_decay):
    tx = make_tx(
        make_config({
            "optim.name": name,
            "optim.weight_decay": weight_decay
        }), 10)
    return tx.update(grads, tx.init(params), params, value=0.0)[0]
  plain, decayed = first_update(0.0), first_update(0.5)
  np.testing.assert_array_equal(decayed["b"], plain["b"])
  assert not np.allclose(decayed["w"], plain["w"])
  lr = 0.1  # the 1-D leaf gets the plain step, no trust ratio
  direction = grads["b"] if name == "lars" else grads["b"] / (jnp.abs(grads["b"]) + 1e-6)
  np.testing.assert_allclose(plain["b"], -lr * direction, rtol=1e-5)


def test_lamb_is_optax_lamb_on_kernels():
  params, loss, _, _ = least_squares()
  kernels = {"w": params["w"]}
  loss_w = lambda p: loss({**p, "b": params["b"]})
  ours = make_tx(make_config({"optim.name": "lamb", "optim.weight_decay": 0.3}), 10)
  reference = optax.lamb(0.1, weight_decay=0.3)
  np.testing.assert_allclose(run(ours, kernels, loss_w, 3)["w"],
                             run(reference, kernels, loss_w, 3)["w"], rtol=1e-6)


def test_clipping_bounds_the_first_sgd_step():
  params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 1e6), params)
  tx = make_tx(
      make_config({
          "optim.momentum": 0.0,
          "optim.weight_decay": 0.0,
          "learning_rate": 0.1,
          "optim.grad_clip_norm": 2.0
      }), 10)
  updates, _ = tx.update(grads, tx.init(params), params, value=0.0)
  assert float(optax.tree.norm(updates)) == pytest.approx(0.1 * 2.0, rel=1e-5)
  unclipped = make_tx(
      make_config({
          "optim.momentum": 0.0,
          "optim.weight_decay": 0.0
      }), 10)
  updates, _ = unclipped.update(grads, unclipped.init(params), params)
  assert float(optax.tree.norm(updates)) > 1e4


A = jnp.array([1.0, 4.0, 9.0])


def quadratic(params):
  return 0.5 * jnp.sum(A * params["w"] ** 2)


def test_sam_step_is_the_gradient_at_the_ascent_point():
  """w - lr (grad(w + rho g / |g|) + wd w): ascent, then SGD's step (with its
  coupled decay) taken from the original weights."""
  lr, rho, wd = 0.1, 0.05, 0.01
  config = make_config({
      "learning_rate": lr,
      "optim.sam_rho": rho,
      "optim.weight_decay": wd,
      "optim.momentum": 0.9
  })
  assert optim.uses_sam(config.optim) and not optim.uses_sam(make_config().optim)
  tx = make_tx(config, 10)
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  g = jax.grad(quadratic)(params)
  seen = []

  def grad_fn(p, i):
    seen.append(i)
    return jax.grad(quadratic)(p)
  updates, _ = tx.update(g, tx.init(params), params, value=quadratic(params), grad_fn=grad_fn)
  w = params["w"]
  ascent = w + rho * g["w"] / jnp.linalg.norm(g["w"])
  np.testing.assert_allclose(updates["w"], -lr * (A * ascent + wd * w), rtol=1e-6)
  assert seen == [0]


def test_sam_works_under_jit_and_needs_grad_fn():
  tx = make_tx(make_config({"optim.sam_rho": 0.05, "optim.name": "adamw"}), 10)
  params = {"w": jnp.array([1.0, -2.0, 0.5])}

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(quadratic)(params)
    updates, state = tx.update(grads, state, params, value=value,
                               grad_fn=lambda p, _: jax.grad(quadratic)(p))
    return optax.apply_updates(params, updates), state
  state = tx.init(params)
  for _ in range(3):
    new, state = step(params, state)
  assert float(quadratic(new)) < float(quadratic(params))
  with pytest.raises(ValueError, match="grad_fn"):
    tx.update(params, state, params)


@pytest.mark.parametrize("table,field,builder", [
    (optim.OPTIMIZERS, "optim.name", lambda c: make_tx(c, 10)),
    (optim.SCHEDULES, "schedule.name", lambda c: lr_schedule(c, 10)),
    (optim.WARMUP_SHAPES, "schedule.warmup_shape", lambda c: lr_schedule(c, 10)),
])
def test_unknown_names_list_exactly_the_table(table, field, builder):
  with pytest.raises(UserError, match=f"unknown config.{field} 'nope'") as error:
    builder(make_config({field: "nope"}))
  listed = str(error.value).split("valid: ")[1].split(", ")
  assert listed == sorted(table)


@pytest.mark.parametrize("name", ["sgd", "adam", "lamb"])
def test_accumulated_micro_batches_equal_the_mean_gradient(name):
  """k micro-batch updates (zeros until the k-th) equal one update with the
  whole batch's gradient, over two global batches."""
  k = 4
  params, loss, x, y = least_squares(n=8)
  micro_config = make_config({
      "optim.name": name,
      "optim.grad_accum_steps": k,
      "learning_rate": 0.05
  })
  micro, whole = (make_tx(micro_config, 10),
                  make_tx(
                      make_config({
                          "optim.name": name,
                          "learning_rate": 0.05
                      }), 10))
  micro_update = jax.jit(lambda g, s, p, v: micro.update(g, s, p, value=v))
  p_micro, s_micro = params, micro.init(params)
  p_whole, s_whole = params, whole.init(params)
  for _ in range(2):
    for i, (xi, yi) in enumerate(zip(jnp.split(x, k), jnp.split(y, k))):
      value, grads = jax.value_and_grad(loss)(p_micro, xi, yi)
      updates, s_micro = micro_update(grads, s_micro, p_micro, value)
      if i < k - 1:
        assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))
      p_micro = optax.apply_updates(p_micro, updates)
    updates, s_whole = whole.update(jax.grad(loss)(p_whole), s_whole, p_whole)
    p_whole = optax.apply_updates(p_whole, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p_micro, p_whole)


def test_the_schedule_counts_global_batches():
  k, lr = 2, 0.1
  config = make_config({
      "schedule.name": "linear",
      "learning_rate": lr,
      "optim.momentum": 0.0,
      "optim.weight_decay": 0.0,
      "optim.grad_accum_steps": k
  })
  schedule = lr_schedule(config, steps_per_epoch=4)
  tx = make_tx(config, steps_per_epoch=4)
  params = {"w": jnp.zeros(2)}
  update, state, emitted = jax.jit(tx.update), tx.init(params), []
  for _ in range(3 * k):
    updates, state = update({"w": jnp.ones(2)}, state, params)
    emitted.append(float(-updates["w"][0]))
  assert emitted[k - 1::k] == pytest.approx([float(schedule(s)) for s in range(3)])
  assert emitted[0::k] == [0.0] * 3


def flat_plateau_scales(config, calls_per_update: int, extra: dict) -> list[float]:
  """plateau_scale after each of 6 epochs of 3 updates at a flat loss."""
  tx = make_tx(config, steps_per_epoch=3)
  update = jax.jit(functools.partial(tx.update, **extra))
  params = {"w": jnp.ones(3)}
  state, scales = tx.init(params), []
  for _ in range(6):
    for _ in range(3 * calls_per_update):
      _, state = update({"w": jnp.ones(3)}, state, params, value=jnp.float32(1.0))
    scales.append(optim.plateau_scale(state))
  return scales


def test_plateau_scale_is_found_inside_sam_and_multisteps():
  plateau = {"schedule.name": "plateau", "schedule.plateau_patience": 2,
             "schedule.plateau_factor": 0.5}
  plain = flat_plateau_scales(make_config(plateau), 1, {})
  assert plain[0] == 1.0 and plain[-1] < 1.0
  sam = flat_plateau_scales(make_config({"optim.sam_rho": 0.05, **plateau}), 1,
                            {"grad_fn": lambda p, _: {"w": jnp.ones(3)}})
  accumulated = flat_plateau_scales(make_config({"optim.grad_accum_steps": 2, **plateau}), 2, {})
  assert sam == plain and accumulated == plain
