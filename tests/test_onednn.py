"""oneDNN's convolutions through XLA's FFI (native/onednn, cnn/kernels/onednn.py):
installed by requirements.txt on x86_64 Linux, equal to XLA's convolution
(tests/test_conv_algorithms.py runs every algorithm, "onednn" among them, on
every geometry and, with --exhaustive, every model shape), bitwise repeatable,
correct under vmap, and left out, with one log line, where it cannot run."""
import platform
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn.kernels import conv_algorithms as ca
from cnn.kernels import onednn
from conftest import REPO

ON_ITS_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"
needs_onednn = pytest.mark.skipif(not onednn.available(), reason="oneDNN extension not loaded")


def layer(batch=16, h=16, w=16, c=16, o=32, k=3, stride=1, groups=1, dtype=jnp.float32):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, h, w, c)), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, c // groups, o)) * 0.1, dtype)
  return x, kernel, (stride, stride), [(k // 2, k // 2)] * 2


def products(plan, x, kernel, strides, pads):
  conv = ca.planned_conv(plan, x.shape, kernel.shape, strides, pads)
  y, vjp = jax.vjp(conv, x, kernel)
  return (y, *vjp(jnp.cos(y)))


def test_installed_where_its_wheels_exist():
  """requirements.txt builds it on x86_64 Linux (CI's machine): there it must load."""
  assert onednn.available() == ON_ITS_PLATFORM


def test_requirements_name_the_package_version_and_the_api_matches():
  import re  # pylint: disable=import-outside-toplevel
  version = re.search(r'^version = "([^"]+)"', (REPO / "native/onednn/pyproject.toml").read_text(),
                      re.M).group(1)
  assert f"cnn-onednn {version} " in (REPO / "requirements.txt").read_text()
  init = (REPO / "native/onednn/src/cnn_onednn/__init__.py").read_text()
  assert f"\nAPI = {onednn.API}\n" in init


@needs_onednn
@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 1), (1, 4), (1, 16)])
def test_repeated_calls_are_bitwise_equal(stride, groups):
  x, kernel, strides, pads = layer(stride=stride, groups=groups)
  run = jax.jit(lambda x, k: products(ca.ONEDNN_PLAN, x, k, strides, pads))
  first, second = run(x, kernel), run(x, kernel)
  for a, b in zip(first, second):
    assert np.array_equal(np.asarray(a), np.asarray(b))


@needs_onednn
def test_bf16_products_are_bf16_and_close_to_xla():
  x, kernel, strides, pads = layer(stride=2, dtype=jnp.bfloat16)
  got = products(ca.ONEDNN_PLAN, x, kernel, strides, pads)
  want = products(ca.XLA_PLAN, x, kernel, strides, pads)
  for a, b in zip(got, want):
    assert a.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(b.astype(jnp.float32))))
    np.testing.assert_allclose(np.float32(a), np.float32(b), atol=2e-2 * scale)


@needs_onednn
def test_vmap_over_a_leading_axis_equals_each_slice():
  """The seed sweep vmaps whole models: x and the kernel both get a seed axis."""
  x, kernel, strides, pads = layer(batch=4)
  xs, ks = jnp.stack([x, x * 0.5, -x]), jnp.stack([kernel, kernel * 2, kernel])
  mapped = jax.jit(jax.vmap(lambda x, k: products(ca.ONEDNN_PLAN, x, k, strides, pads)))(xs, ks)
  for i in range(3):
    want = products(ca.XLA_PLAN, xs[i], ks[i], strides, pads)
    for a, b in zip(mapped, want):
      err = float(jnp.max(jnp.abs(a[i] - b)) / jnp.max(jnp.abs(b)))
      assert err < 1e-5


def test_rule_uses_it_on_one_cpu_device_only():
  shape = dict(lhs_shape=(2, 8, 8, 16), rhs_shape=(3, 3, 16, 16), window_strides=(1, 1),
               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  from cnn import kernels  # pylint: disable=import-outside-toplevel
  from cnn.models.layers import LayerSpec  # pylint: disable=import-outside-toplevel
  want = ca.ONEDNN_PLAN if onednn.available() else ca.XLA_PLAN
  cpu = kernels.for_backend(LayerSpec(), "cpu")
  assert cpu.conv.compute == ca.PlannedConv(onednn=onednn.available())
  assert ca.plan_for(**shape, use_onednn=cpu.conv.compute.onednn) == want
  assert ca.plan_for(**shape, use_onednn=False) == ca.XLA_PLAN
  assert (cpu.norm.training is not None) == onednn.available()
  for backend in ("gpu", "tpu"):  # never on accelerators
    assert kernels.for_backend(LayerSpec(), backend) == LayerSpec()


PROBE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
{setup}
from cnn import kernels
from cnn.kernels import conv_algorithms as ca
from cnn.models.layers import LayerSpec
shape = ((2, 8, 8, 16), (3, 3, 16, 16), (1, 1))
for _ in range(2):  # as model_fn.build decides, once per model built
  use_onednn = kernels.for_backend(LayerSpec(), "cpu").conv.compute.onednn
  print("PLAN", ca.plan_for(*shape, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                            use_onednn=use_onednn))
"""


def probe(setup: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
  import os  # pylint: disable=import-outside-toplevel
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
  return subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120, check=True)


def test_without_the_extension_the_builtin_rule_runs_and_says_so_once():
  """Where the wheel does not exist (aarch64, macOS) `import cnn_onednn` fails."""
  result = probe("sys.modules['cnn_onednn'] = None  # what a missing package does to import")
  assert result.stdout.count("PLAN Plan(forward='xla'") == 2, result.stdout
  lines = [l for l in result.stderr.splitlines() if "oneDNN convolutions unavailable" in l]
  assert len(lines) == 1 and "built-in algorithms" in lines[0], result.stderr


@needs_onednn
def test_an_older_build_in_the_environment_falls_back_and_says_how_to_rebuild(tmp_path):
  """The package as it was before its API number (e.g. a venv made at an older commit): its
  handlers have other names, so calling them would fail inside XLA."""
  import shutil  # pylint: disable=import-outside-toplevel
  import cnn_onednn  # pylint: disable=import-outside-toplevel
  old = tmp_path / "cnn_onednn"
  shutil.copytree(Path(cnn_onednn.__file__).parent, old)
  init = old / "__init__.py"
  init.write_text(init.read_text().replace("API = ", "_NO_API = ").replace(
      'return f"cnn_onednn_{handler}"', 'return f"cnn_onednn_{handler}".replace("conv_", "")'))
  result = probe("", {"PYTHONPATH": f"{tmp_path}:{REPO}"})
  assert result.stdout.count("PLAN Plan(forward='xla'") == 2, result.stdout
  lines = [l for l in result.stderr.splitlines() if "cnn-onednn" in l]
  assert len(lines) == 1 and f"has API 1, this code calls API {onednn.API}" in lines[0], (
      result.stderr)
  assert "pip install -r requirements.txt" in lines[0]


@needs_onednn
def test_several_devices_use_the_builtin_rule_and_say_so_once():
  result = probe("", {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert result.stdout.count("PLAN Plan(forward='xla'") == 2, result.stdout
  lines = [l for l in result.stderr.splitlines() if "not oneDNN's" in l]
  assert len(lines) == 1 and lines[0].startswith("2 devices: "), result.stderr


def flax_batch_norm(x, scale, bias):
  """nn.BatchNorm in training: y and its batch statistics (the reference)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  bn = nn.BatchNorm(use_running_average=False, momentum=0.0, epsilon=1e-5, dtype=x.dtype)
  variables = {"params": {"scale": scale, "bias": bias},
               "batch_stats": {"mean": jnp.zeros_like(scale), "var": jnp.ones_like(scale)}}
  y, stats = bn.apply(variables, x, mutable=["batch_stats"])
  return y, stats["batch_stats"]["mean"], stats["batch_stats"]["var"]


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_batch_norm_and_its_gradients_match_flax(dtype, tol, relu):
  """With `relu`, oneDNN's fused BatchNorm+ReLU against flax's BatchNorm then nn.relu: about
  half the outputs are 0 (bias around 0), where the gradient must stop."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(32, 8, 8, 16)) * 3 + 1, dtype)
  scale = jnp.asarray(rng.normal(size=16), jnp.float32)
  bias = jnp.asarray(rng.normal(size=16), jnp.float32)

  def reference(x, scale, bias):
    y, mean, var = flax_batch_norm(x, scale, bias)
    return (jax.nn.relu(y) if relu else y), mean, var

  ours = onednn.batch_norm(x, scale, bias, 1e-5, relu)
  want = reference(x, scale, bias)
  for a, b in zip(ours, want):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.float32(a), np.float32(b), atol=tol * float(jnp.max(jnp.abs(
        b.astype(jnp.float32)))))
  if relu:
    assert 0.3 < float(jnp.mean(ours[0] == 0)) < 0.7
  loss = lambda f: lambda x, s, b: jnp.sum(jnp.sin(f(x, s, b)[0].astype(jnp.float32)))  # noqa
  got = jax.grad(loss(lambda *a: onednn.batch_norm(*a, 1e-5, relu)), argnums=(0, 1, 2))(
      x, scale, bias)
  ref = jax.grad(loss(reference), argnums=(0, 1, 2))(x, scale, bias)
  for a, b in zip(got, ref):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.float32(a), np.float32(b), atol=tol * float(jnp.max(jnp.abs(
        b.astype(jnp.float32)))))


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_repeated_calls_are_bitwise_equal(relu):
  x = jnp.asarray(np.random.default_rng(7).normal(size=(16, 8, 8, 32)), jnp.float32)
  scale, bias = jnp.full(32, 1.5), jnp.full(32, 0.1)
  step = jax.jit(jax.value_and_grad(
      lambda t, s: jnp.sum(jnp.sin(onednn.batch_norm(t, s, bias, 1e-5, relu)[0])), (0, 1)))
  first = step(x, scale)
  for _ in range(3):
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(step(x, scale))):
      np.testing.assert_array_equal(a, b)


@needs_onednn
def test_fused_batch_norm_relu_under_vmap_equals_each_slice():
  x = jnp.asarray(np.random.default_rng(6).normal(size=(3, 8, 4, 4, 8)), jnp.float32)
  scale, bias = jnp.ones(8), jnp.zeros(8)
  f = lambda t: onednn.batch_norm(t, scale, bias, 1e-5, True)[0]  # noqa: E731
  mapped = jax.vmap(jax.grad(lambda t: jnp.sum(jnp.sin(f(t)))))(x)
  for i in range(3):
    np.testing.assert_array_equal(mapped[i], jax.grad(lambda t: jnp.sum(jnp.sin(f(t))))(x[i]))


@needs_onednn
def test_models_train_with_it_on_the_same_variables_and_numbers():
  """A model's training pass takes oneDNN's BatchNorm (its variables are nn.BatchNorm's, so
  checkpoints and weights files are unchanged) and gives the builtin model's loss, gradients
  and running averages within float32 tolerance."""
  from cnn.models import create_model  # pylint: disable=import-outside-toplevel
  from cnn import kernels  # pylint: disable=import-outside-toplevel
  from cnn.models.layers import LayerSpec  # pylint: disable=import-outside-toplevel
  x = jnp.asarray(np.random.default_rng(5).normal(size=(8, 16, 16, 3)), jnp.float32)
  fast = create_model("resnet8_v1", num_classes=10, spec=kernels.for_backend(LayerSpec(), "cpu"))
  builtin = create_model("resnet8_v1", num_classes=10,
                         spec=kernels.for_backend(LayerSpec(), "cpu", "builtin"))
  variables = fast.init(jax.random.key(0), x, train=False)

  def loss(params, model):
    logits, stats = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
    return jnp.mean(logits ** 2), stats

  jaxpr = str(jax.make_jaxpr(lambda p: loss(p, fast))(variables["params"]))
  assert "cnn_onednn_batchnorm_forward" in jaxpr and "cnn_onednn_conv_forward" in jaxpr
  assert "cnn_onednn_batchnorm_relu_forward" in jaxpr  # its BN-ReLUs, fused (layers.norm_act)
  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (la, sa), ga = grad(variables["params"], fast)
  (lb, sb), gb = grad(variables["params"], builtin)
  assert jax.tree.structure(ga) == jax.tree.structure(gb)
  np.testing.assert_allclose(la, lb, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # Gradients at initialisation pass through 7 BatchNorms; they agree to 1e-3 of their scale.
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, atol=1e-3 * float(jnp.max(jnp.abs(b))) + 1e-7)
