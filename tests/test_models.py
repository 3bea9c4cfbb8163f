"""Parameter counts against the papers and output shapes of every model, and
the split between a model (its architecture) and its LayerSpec (how its layers
compute)."""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn.errors import UserError
from cnn import kernels, model_fn
from cnn.kernels.barrier import fusion_barrier
from cnn.models import create_model, registry
from cnn.models.layers import Conv, LayerSpec, Norm
from cnn.models.resnet import zero_pad_shortcut
from configs import default
from cnn.models.vgg import VGG_LAYERS


def variables_of(name, shape=(1, 32, 32, 3), **kwargs):
  model = create_model(name, num_classes=10, **kwargs)
  return model, jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(shape), train=False))


def num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def paper_cifar_resnet_params(n: int, projection: bool) -> int:
  """He et al. (2016) Sec. 4.2 by hand: 3x3 conv stem, 3 stages of n basic
  blocks (two 3x3 convs + 2 BN each) at 16/32/64 filters, dense 64->10; the
  two downsampling shortcuts add a 1x1 conv + BN under option B."""
  total, cin = 3 * 3 * 3 * 16 + 2 * 16, 16
  for width in (16, 32, 64):
    for _ in range(n):
      total += 9 * cin * width + 9 * width * width + 4 * width
      cin = width
  if projection:
    total += (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
  return total + 64 * 10 + 10


@pytest.mark.parametrize("depth,paper_millions", [(20, 0.27), (56, 0.85), (110, 1.7)])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_resnet_param_counts_match_paper(depth, paper_millions, version):
  n = (depth - 2) // 6
  _, option_a = variables_of(f"resnet{depth}_{version}", shortcut="zero_pad")
  _, option_b = variables_of(f"resnet{depth}_{version}")
  # v2 moves BN around (stem BN becomes the final BN): same count.
  assert num_params(option_a["params"]) == paper_cifar_resnet_params(n, projection=False)
  assert abs(num_params(option_a["params"]) / 1e6 - paper_millions) / paper_millions < 0.02
  v2_projection_has_no_bn = 2 * 32 + 2 * 64 if version == "v2" else 0
  assert num_params(option_b["params"]) == (
      paper_cifar_resnet_params(n, projection=True) - v2_projection_has_no_bn)


def test_resnet164_bottleneck_matches_paper():
  _, variables = variables_of("resnet164_v2")
  assert abs(num_params(variables["params"]) / 1e6 - 1.7) < 0.05  # He et al. 2016b Table 2


def test_vgg16_conv_weights_match_paper():
  """Configuration D of Simonyan & Zisserman (2015): its 13 conv layers."""
  widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  expected = sum(9 * cin * cout for cin, cout in zip([3] + widths[:-1], widths))
  _, variables = variables_of("vgg16")
  kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(variables["params"])
             if "Conv" in jax.tree_util.keystr(path) and x.ndim == 4]
  assert len(kernels) == 13
  assert sum(int(np.prod(k.shape)) for k in kernels) == expected == 14_710_464
  assert [v for v in VGG_LAYERS[16] if v != "M"] == widths


@pytest.mark.parametrize("name", sorted(registry()))
@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3)])
def test_every_model_gives_logits_on_both_input_sizes(name, shape):
  model, variables = variables_of(name, shape)
  for train in (False, True):
    logits = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros(shape), train=train, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.key(1)})[0], variables)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


def test_zero_pad_shortcut_subsamples_and_pads():
  x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
  y = zero_pad_shortcut(x, filters=6, strides=2)
  assert y.shape == (2, 2, 2, 6)
  np.testing.assert_array_equal(y[..., 2:4], x[:, ::2, ::2, :])
  assert not np.any(y[..., :2]) and not np.any(y[..., 4:])


def test_unknown_model_lists_valid_names():
  with pytest.raises(UserError, match="unknown model 'resnet21'.*resnet20_v1"):
    create_model("resnet21", num_classes=10)


def test_bad_depth_and_kwargs_are_user_errors():
  with pytest.raises(UserError, match="6n\\+2"):
    variables_of("resnet20_v1", depth=21)
  with pytest.raises(UserError, match="model_kwargs"):
    create_model("vgg16", num_classes=10, nonsense=1)
  with pytest.raises(UserError, match="model_kwargs.*'dtype'"):  # a spec field, not a kwarg
    create_model("vgg16", num_classes=10, dtype=jnp.bfloat16)


PLUMBING = {f.name for f in dataclasses.fields(LayerSpec)}


@pytest.mark.parametrize("name", sorted(registry()))
def test_models_declare_their_architecture_only(name):
  """Every family takes how its layers compute as one `spec` field (a LayerSpec), and
  declares none of the spec's fields itself: a new model needs no CPU plumbing."""
  factory = registry()[name]
  module_class = getattr(factory, "func", factory)  # nested partials flatten to the class
  fields = {f.name: f for f in dataclasses.fields(module_class)}
  assert not PLUMBING & set(fields), f"{module_class.__name__} declares {PLUMBING & set(fields)}"
  specs = [n for n, f in fields.items() if f.type is LayerSpec]
  assert specs == ["spec"] and fields["spec"].default == LayerSpec()
  spec = LayerSpec(norm=Norm(groups=2))
  assert create_model(name, num_classes=10, spec=spec).spec.norm.groups == 2


def test_layer_spec_is_hashable_by_value():
  """Equal and hash-equal however the dtype is spelt and however often the CPU's
  kernels are handed in, so a model stays a static jit argument (no recompiling)."""
  assert LayerSpec(dtype="bfloat16") == LayerSpec(dtype=jnp.bfloat16)
  assert hash(LayerSpec(dtype="float32")) == hash(LayerSpec())
  cpu = [kernels.for_backend(LayerSpec(), "cpu") for _ in range(2)]
  assert cpu[0] == cpu[1] and hash(cpu[0]) == hash(cpu[1]) and cpu[0] != LayerSpec()
  assert kernels.for_backend(LayerSpec(), "cpu", "xla") != cpu[0]
  for backend in ("gpu", "tpu"):  # flax's own layers there
    assert kernels.for_backend(LayerSpec(), backend) == LayerSpec()
  assert LayerSpec(conv=Conv("same"), norm=Norm(2), dtype="bfloat16").portable() == LayerSpec(
      conv=Conv("same"), norm=Norm(2), dtype=jnp.bfloat16)
  assert cpu[0].portable() == LayerSpec()


MODELS_DIR = Path(__file__).resolve().parents[1] / "cnn" / "models"


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_model_asks_where_it_runs(path):
  """Models hold architecture only: none asks for the backend or the devices, and
  none imports the CPU kernels (model_fn.build hands them in)."""
  source = path.read_text()
  for asked in ("default_backend", "device_count", "devices()", "cnn.kernels",
                "from cnn import kernels"):
    assert asked not in source, f"{path.name} has {asked!r}"


def test_the_spec_changes_how_layers_compute_not_the_parameters_or_the_numbers():
  """Parameters are bitwise the same under any spec (checkpoints load under the export's
  flax-only spec); the fusion barrier leaves every value bitwise alone, in training too;
  with XLA's convolutions the CPU's kernels (pool, barrier) give bitwise flax's forward
  pass, and with the per-shape algorithms (oneDNN's or conv_algorithms.py's) it is
  within float32 rounding of it."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
  specs = {"default": kernels.for_backend(LayerSpec(), "cpu"),
           "xla": kernels.for_backend(LayerSpec(), "cpu", "xla"),
           "no barrier": kernels.for_backend(LayerSpec(), "cpu", fusion_barrier=False),
           "flax": LayerSpec()}
  models = {k: create_model("resnet8_v1", num_classes=10, spec=s) for k, s in specs.items()}
  inits = {k: m.init(jax.random.key(0), x, train=False) for k, m in models.items()}
  for variables in inits.values():
    jax.tree.map(np.testing.assert_array_equal, variables, inits["default"])
  variables = inits["default"]
  evals = {k: m.apply(variables, x, train=False) for k, m in models.items()}
  trains = {k: m.apply(variables, x, train=True, mutable=["batch_stats"])
            for k, m in models.items()}
  np.testing.assert_array_equal(evals["no barrier"], evals["default"])
  jax.tree.map(np.testing.assert_array_equal, trains["no barrier"], trains["default"])
  np.testing.assert_array_equal(evals["xla"], evals["flax"])
  np.testing.assert_allclose(evals["flax"], evals["default"], rtol=1e-5, atol=1e-5)


def test_build_makes_the_spec_from_config_layers_and_the_architecture_from_model_kwargs():
  """`config.layers` reaches the spec, `config.model_kwargs` the architecture; an
  unknown kwarg is the one-line model_kwargs error."""
  config = default.get_config()
  config.model = "resnet8_v1"
  config.layers.update({"dtype": "bfloat16", "conv_padding": "same", "fusion_barrier": False})
  config.model_kwargs = {"shortcut": "zero_pad"}
  model = model_fn.build(config.model, config.model_kwargs, config.layers, num_classes=10,
                         norm_groups=2, backend="cpu")
  flax_layers = LayerSpec(dtype=jnp.bfloat16, conv=Conv("same"), norm=Norm(groups=2))
  assert model.spec == kernels.for_backend(flax_layers, "cpu", fusion_barrier=False)
  assert model.spec.barrier is LayerSpec().barrier and model.spec.norm.training is None
  assert model_fn.build(config.model, {}, config.layers, num_classes=10, norm_groups=2,
                        backend="gpu").spec == flax_layers
  assert model.shortcut == "zero_pad"
  config.model_kwargs.nonsense = 1
  with pytest.raises(UserError, match="^bad config.model_kwargs for 'resnet8_v1': .*nonsense"):
    model_fn.build(config.model, config.model_kwargs, config.layers, num_classes=10)


def test_fusion_barrier_is_the_identity_for_values_and_gradients():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 4)), jnp.float32)
  nan_first = x.at[0, 0, 0, 0].set(jnp.nan)  # takes the other branch
  for value in (x, nan_first, x.astype(jnp.bfloat16)):
    out = jax.jit(fusion_barrier)(value)
    assert out.dtype == value.dtype
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(value, np.float32))
  grad = jax.grad(lambda t: jnp.sum(fusion_barrier(t) * t))(x)
  np.testing.assert_array_equal(grad, 2 * x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape,window", [
    ((3, 8, 8, 5), 2), ((2, 4, 6, 3), 2),
    ((2, 7, 7, 3), 2),  # odd: "SAME" pads (nn.max_pool), "VALID" drops the last row and column
    ((2, 9, 9, 3), 3), ((2, 8, 7, 3), 3)])  # 3x3 windows (the speedrun net's last pool)
def test_max_pool_is_nn_max_pool_bitwise_values_and_gradients(dtype, shape, window):
  """Ties included: after a ReLU, and small integers, many windows share their maximum;
  the gradient must go to the first of them (row-major), as select_and_scatter's does."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from cnn.kernels.pool import max_pool  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  inputs = (np.maximum(rng.normal(size=shape), 0), rng.integers(0, 3, size=shape),
            rng.normal(size=shape))
  k = (window, window)
  for padding in ("SAME", "VALID"):
    ours = lambda x, p=padding: max_pool(x, k, k, p)  # noqa: E731
    flax = lambda x, p=padding: nn.max_pool(x, k, strides=k, padding=p)  # noqa: E731
    for values in inputs:
      x = jnp.asarray(values, dtype)
      weights = jnp.arange(flax(x).size, dtype=jnp.float32).reshape(flax(x).shape) - 7
      for f in (ours, flax):
        assert jax.jit(f)(x).dtype == dtype
      np.testing.assert_array_equal(np.asarray(jax.jit(ours)(x), np.float32),
                                    np.asarray(jax.jit(flax)(x), np.float32))
      grads = [np.asarray(jax.jit(jax.grad(
          lambda t, f=f: jnp.sum(f(t).astype(jnp.float32) * weights)))(x), np.float32)
               for f in (ours, flax)]
      np.testing.assert_array_equal(*grads)
