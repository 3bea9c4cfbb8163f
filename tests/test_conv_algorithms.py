"""The CPU convolution algorithms (cnn/kernels/conv_algorithms.py): each equals
XLA's convolution within float32 tolerance, the rule is deterministic and
matches the measured table, nothing changes on other backends, and models
train identically with it (same seed, same metrics; resume is covered by
tests/test_resume.py, which runs the default "auto")."""
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn.kernels import conv_algorithms as ca
from cnn.kernels import onednn
from cnn.models import create_model
from cnn import kernels
from cnn.models.layers import LayerSpec
from cnn.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "benchmarks/results/conv_shapes_cpu.json"
# float32: the alternatives add the same products in another order. Relative
# to the largest magnitude of the result, 1e-5 is ~100 ulp, far below any
# algorithmic mistake (a wrong tap or stride gives O(1) errors).
RTOL = 1e-5


def reference(x, w, strides, padding, g):
  groups = x.shape[-1] // w.shape[2]
  conv = lambda x, w: lax.conv_general_dilated(  # noqa: E731
      x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups)
  y, vjp = jax.vjp(conv, x, w)
  return (y, *vjp(g))


def planned(plan, x, w, strides, padding, g):
  y, vjp = jax.vjp(ca.planned_conv(plan, x.shape, w.shape, strides, padding), x, w)
  return (y, *vjp(g))


def assert_close(got, want, what):
  for name, a, b in zip(("forward", "input grad", "kernel grad"), got, want):
    assert a.shape == b.shape and a.dtype == b.dtype, (what, name)
    err = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    assert err < RTOL, f"{what}: {name} relative error {err:.2e}"


def check_all_algorithms(batch, h, w, c, o, kernel, strides, padding, groups=1):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, h, w, c)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(*kernel, c // groups, o)) * 0.1, jnp.float32)
  y = jax.eval_shape(lambda: lax.conv_general_dilated(
      x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups))
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  want = reference(x, k, strides, padding, g)
  # The three products are independent functions of the plan, so one plan
  # per algorithm covers every (product, algorithm) pair that applies.
  for algorithm in ca.candidates(ca.layer_shape(x.shape, k.shape, strides)):
    plan = ca.Plan(algorithm, algorithm, algorithm)
    got = jax.jit(planned, static_argnums=(0, 3, 4))(plan, x, k, strides, padding, g)
    assert_close(got, want, f"{(h, w, c, o, kernel, strides, padding)} {algorithm}")


# Every kind of geometry the models use, and the edge cases around them.
GEOMETRIES = [
    (8, 8, 4, 6, (3, 3), (1, 1), ((1, 1), (1, 1))),  # the CIFAR 3x3
    (8, 8, 4, 6, (3, 3), (2, 2), ((1, 1), (1, 1))),  # strided, symmetric (Torch)
    (8, 8, 4, 6, (3, 3), (2, 2), "SAME"),  # strided, TensorFlow's (0, 1)
    (7, 7, 3, 5, (3, 3), (2, 2), ((1, 1), (1, 1))),  # odd size (MNIST 7x7)
    (9, 6, 3, 4, (3, 3), (1, 1), "VALID"),  # non-square, no padding
    (8, 8, 4, 6, (1, 1), (2, 2), ((0, 0), (0, 0))),  # 1x1 projection shortcut
    (8, 8, 3, 4, (5, 5), (1, 1), ((2, 2), (2, 2))),  # 5x5 (Inception)
    (2, 2, 16, 16, (3, 3), (1, 1), ((1, 1), (1, 1))),  # VGG's last stage
    (1, 1, 16, 16, (3, 3), (1, 1), ((1, 1), (1, 1))),  # VGG on MNIST, 1x1 input
    (4, 4, 8, 8, (3, 3), (1, 1), ((1, 1), (1, 1))),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_every_algorithm_matches_xla(geometry):
  check_all_algorithms(3, *geometry)


# Grouped (ResNeXt's cardinality) and depthwise (MobileNet, groups = channels,
# also with a channel multiplier) convolutions.
GROUPED = [
    (8, 8, 8, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), 8),  # depthwise
    (8, 8, 8, 8, (3, 3), (2, 2), ((1, 1), (1, 1)), 8),  # depthwise, strided
    (7, 7, 4, 8, (3, 3), (2, 2), "SAME", 4),  # depthwise, multiplier 2, odd size
    (2, 2, 8, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), 8),  # depthwise, tiny input
    (8, 8, 12, 18, (3, 3), (1, 1), ((1, 1), (1, 1)), 3),  # ResNeXt-like
    (8, 8, 12, 12, (3, 3), (2, 2), ((1, 1), (1, 1)), 4),  # ResNeXt-like, strided
    (6, 6, 8, 8, (1, 1), (1, 1), ((0, 0), (0, 0)), 2),  # grouped 1x1
]


@pytest.mark.parametrize("geometry", GROUPED, ids=str)
def test_grouped_algorithms_match_xla(geometry):
  check_all_algorithms(3, *geometry)


@functools.cache
def model_layers(names=None):
  from benchmarks import conv_shapes  # pylint: disable=import-outside-toplevel
  return conv_shapes.all_layers(2, list(names) if names else None)


# tests/test_resume.py's model (stems, strided layers, 1x1 projections) and
# VGG-16 (2x2 and 1x1 inputs, kernel gradients by taps); every registered
# model: the exhaustive suite.
CI_MODELS = ("resnet8_v1", "vgg16")


@pytest.mark.parametrize("models", [
    CI_MODELS, pytest.param(None, marks=pytest.mark.exhaustive)], ids=["ci", "all"])
def test_rule_choices_match_xla_on_every_model_shape(models):
  """Every distinct conv shape of the models (CI: those of CI_MODELS, the
  exhaustive suite: every registered model) where the rule picks something
  other than XLA, at batch 2, through the public entry point
  (`PlannedConv` as flax calls it) against XLA's convolution."""
  rng = np.random.default_rng(1)
  checked = 0
  for layer in model_layers(models):
    groups = layer["groups"]
    x_shape = (layer["batch"], layer["height"], layer["width"], layer["in_channels"])
    k_shape = (*layer["kernel"], layer["in_channels"] // groups, layer["out_channels"])
    strides, padding = tuple(layer["strides"]), [tuple(p) for p in layer["padding"]]
    if ca.choose(ca.layer_shape(x_shape, k_shape, strides)) == ca.XLA_PLAN:
      continue
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=k_shape) * 0.1, jnp.float32)
    dn = lax.conv_dimension_numbers(x_shape, k_shape, ("NHWC", "HWIO", "NHWC"))
    ours = lambda x, k: ca.PlannedConv(onednn.available())(  # noqa: E731
        x, k, strides, padding, dimension_numbers=dn, feature_group_count=groups)
    y, vjp = jax.vjp(ours, x, k)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    assert_close((y, *vjp(g)), reference(x, k, strides, padding, g), str(layer))
    checked += 1
  assert checked >= 3  # VGG's 2x2 and 4x4 stages, MNIST's 1x1: the rule is in use


@pytest.mark.exhaustive
def test_every_algorithm_on_every_model_shape():
  """Every algorithm for every product on every distinct conv shape of every
  registered model (batch 2)."""
  for layer in model_layers():
    check_all_algorithms(2, layer["height"], layer["width"], layer["in_channels"],
                         layer["out_channels"], tuple(layer["kernel"]),
                         tuple(layer["strides"]), tuple(tuple(p) for p in layer["padding"]),
                         layer["groups"])


def test_bf16_compute_stays_bf16_and_close():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 2, 2, 32)), jnp.bfloat16)
  k = jnp.asarray(rng.normal(size=(3, 3, 32, 32)) * 0.1, jnp.bfloat16)
  dn = lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
  pad = [(1, 1), (1, 1)]
  ours = ca.PlannedConv(onednn.available())(x, k, (1, 1), pad, dimension_numbers=dn)
  want = lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=dn)
  assert ours.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(ours), np.float32(want), rtol=2e-2, atol=2e-2)


def test_the_rule_is_a_pure_function_of_the_shape():
  shape = ca.ConvShape(2, 2, 512, 512, (3, 3), (1, 1))
  assert ca.choose(shape) == ca.choose(ca.ConvShape(*shape))
  assert ca.choose(shape) == ca.Plan("im2col", "im2col", "xla")
  assert ca.choose(ca.ConvShape(32, 32, 16, 16, (3, 3), (1, 1))) == ca.XLA_PLAN
  assert ca.choose(ca.ConvShape(32, 32, 16, 16, (1, 1), (1, 1))) == ca.Plan(*["taps"] * 3)


def test_no_effect_on_other_backends():
  """Built for a GPU or a TPU, a model's convolutions are flax's own (no
  PlannedConv at all), and an XLA plan is `lax.conv_general_dilated`
  unchanged (the same jaxpr)."""
  from cnn import model_fn  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  for backend in ("gpu", "cuda", "rocm", "tpu"):
    for algorithm in kernels.CONV_ALGORITHMS:
      assert kernels.for_backend(LayerSpec(), backend, algorithm).conv.compute is None
    config = default.get_config()
    assert model_fn.build(config.model, {}, config.layers, 10, backend=backend).spec == LayerSpec()
  x, k = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 16))  # the built-in rule keeps XLA
  dn = ("NHWC", "HWIO", "NHWC")
  assert ca.plan_for(x.shape, k.shape, (1, 1), dimension_numbers=dn,
                     use_onednn=False) == ca.XLA_PLAN
  ours = jax.make_jaxpr(lambda x, k: ca.PlannedConv(onednn=False)(
      x, k, (1, 1), "SAME", dimension_numbers=dn))(x, k)
  xla = jax.make_jaxpr(lambda x, k: lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=dn))(x, k)
  assert str(ours) == str(xla)


def test_dilated_and_batch_grouped_convolutions_stay_with_xla():
  base = dict(lhs_shape=(2, 2, 2, 512), rhs_shape=(3, 3, 512, 512), window_strides=(1, 1),
              dimension_numbers=("NHWC", "HWIO", "NHWC"), use_onednn=onednn.available())
  assert ca.plan_for(**base) != ca.XLA_PLAN
  grouped = base | {"rhs_shape": (3, 3, 64, 512), "feature_group_count": 8}
  assert ca.plan_for(**grouped) == ca.choose(ca.ConvShape(2, 2, 512, 512, (3, 3), (1, 1), 8),
                                             onednn=onednn.available())
  assert ca.plan_for(**base | {"rhs_dilation": (2, 2)}) == ca.XLA_PLAN
  assert ca.plan_for(**base | {"batch_group_count": 2}) == ca.XLA_PLAN
  assert ca.plan_for(**base | {"dimension_numbers": ("NCHW", "OIHW", "NCHW")}) == ca.XLA_PLAN


@pytest.mark.slow
def test_models_give_the_same_logits_and_gradients_with_either_setting():
  """VGG-11 on MNIST-sized input (1x1 and 2x2 stages, the stem and the
  kernel gradients use the alternatives): the "auto" model equals the "xla"
  model, parameters are interchangeable."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 28, 28, 1)), jnp.float32)
  auto = create_model("vgg11", num_classes=10, spec=kernels.for_backend(LayerSpec(), "cpu"))
  xla = create_model("vgg11", num_classes=10, spec=kernels.for_backend(LayerSpec(), "cpu", "xla"))
  variables = auto.init(jax.random.key(0), x, train=False)
  assert jax.tree.structure(variables) == jax.tree.structure(
      xla.init(jax.random.key(0), x, train=False))

  def loss(params, model):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    return jnp.mean(logits ** 2), logits

  (la, ya), ga = jax.value_and_grad(loss, has_aux=True)(variables["params"], auto)
  (lx, yx), gx = jax.value_and_grad(loss, has_aux=True)(variables["params"], xla)
  np.testing.assert_allclose(ya, yx, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gx)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * float(jnp.max(jnp.abs(b))))
  assert jnp.allclose(la, lx, rtol=1e-5)


def test_unknown_algorithm_is_a_user_error():
  """As a user sets it (`config.layers.conv_algorithm`): one line, from the setting's
  declaration (checked once, before anything is built)."""
  from cnn.config_validation import validate_config  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.layers.conv_algorithm = "fast"
  with pytest.raises(UserError, match="^unknown config.layers.conv_algorithm 'fast'; valid: "
                     "auto, builtin, xla$"):
    validate_config(config)  # main.py says so first, before anything is built


@pytest.mark.skipif(not TABLE.exists(), reason="no measured table")
def test_rule_is_within_noise_of_the_best_measured():
  """Against benchmarks/results/conv_shapes_cpu.json: for every measured plain
  shape and product, the rule's algorithm costs at most 1.5x the fastest
  algorithm's time, or at most 10 ms more. Single layers on this shared
  2-core machine vary by up to 2x between runs (the same computation timed
  twice); the gains the rule exists for are 1.5-100x. For a 1x1 kernel,
  "im2col" and "taps" run the same single matmul in the forward pass and the
  input gradient, so either counts as the other's time there."""
  from benchmarks import conv_shapes  # pylint: disable=import-outside-toplevel
  result = json.loads(TABLE.read_text())
  # A row not yet timed with every algorithm (a table being continued) is left out.
  rows = [r for r in result["rows"]
          if set(conv_shapes.algorithms_for(r, with_onednn=False)) <= set(r["ms"])]
  assert len(rows) >= 100
  worse = []
  for row in rows:
    pick = conv_shapes.rule(row)
    for product in conv_shapes.PRODUCTS:
      times = {a: row["ms"][a][product]
               for a in conv_shapes.algorithms_for(row, with_onednn=False)}
      if row["kernel"] == [1, 1] and product != "kernel_grad":
        times["im2col"] = times["taps"] = min(times["im2col"], times["taps"])
      best, ours = min(times.values()), times[pick[product]]
      if ours > 1.5 * best and ours - best > 10.0:
        worse.append(f"{conv_shapes.describe(row)} {product}: {pick[product]} {ours} ms, "
                     f"best {best} ms")
  assert not worse, "\n".join(worse)


@pytest.mark.skipif(not TABLE.exists(), reason="no measured table")
def test_rule_with_onednn_is_within_noise_of_the_best_measured_on_every_shape():
  """The same bound for the rule where oneDNN is available ("onednn" for every product):
  every shape of every registered model has its oneDNN column, and at none of them is
  another algorithm more than 1.5x (and 10 ms) faster."""
  from benchmarks import conv_shapes  # pylint: disable=import-outside-toplevel
  result = json.loads(TABLE.read_text())
  rows = [r for r in result["rows"] if "onednn" in r["ms"]]
  assert len(rows) == len(result["rows"]) == result["shapes_total"]
  worse = []
  for row in rows:
    pick = conv_shapes.rule(row, onednn=True)
    for product in conv_shapes.PRODUCTS:
      times = {a: row["ms"][a][product] for a in conv_shapes.algorithms_for(row, with_onednn=True)}
      best, ours = min(times.values()), times[pick[product]]
      if ours > 1.5 * best and ours - best > 10.0:
        worse.append(f"{conv_shapes.describe(row)} {product}: {pick[product]} {ours} ms, "
                     f"best {best} ms")
  assert not worse, "\n".join(worse)
