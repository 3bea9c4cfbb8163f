"""Pins each choice that makes a config reproduce its paper's recipe
(He et al. 2016a/b for the CIFAR ResNets; see configs/_he2016.py)."""
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn.config_validation import validate_config
from cnn.errors import UserError
from cnn.models import create_model
from cnn.models.layers import Conv, LayerSpec
from conftest import lr_schedule

CONFIGS = Path(__file__).parents[1] / "configs"
HE_V1 = ("resnet20v1_cifar10", "resnet32v1_cifar10", "resnet44v1_cifar10",
         "resnet56v1_cifar10", "resnet110v1_cifar10")
HE_V2 = ("resnet20v2_cifar10", "resnet56v2_cifar10", "resnet110v2_cifar10",
         "resnet164v2_cifar10")


def load(name: str, *args):
  """A config as `--config=configs/NAME.py[:ARG]` loads it."""
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


@pytest.mark.parametrize("name", HE_V1)
def test_he_v1_configs_use_option_a_shortcuts(name):
  config = load(name)
  assert config.model_kwargs.shortcut == "zero_pad"
  depth = int(name.removeprefix("resnet").split("v")[0])
  assert config.model == f"resnet{depth}_v1"


@pytest.mark.parametrize("name", HE_V2)
def test_he_v2_configs_use_projections_like_the_authors_code(name):
  assert load(name).model_kwargs.get("shortcut", "projection") == "projection"


@pytest.mark.parametrize("name", HE_V1 + HE_V2)
def test_he_configs_pad_symmetrically_and_follow_the_paper_protocol(name):
  config = load(name)
  validate_config(config)
  assert config.layers.conv_padding == "symmetric"
  assert (config.protocol, config.data.train_split, config.data.validation_split) == ("paper",
                                                                                      "train", "")
  steps = config.num_epochs * (50_000 // config.batch_size)
  assert abs(steps - 64_000) <= 64_000 * 0.001  # 63,960: whole epochs of full batches
  assert (config.optim.name, config.learning_rate, config.optim.momentum, config.optim.nesterov,
          config.optim.weight_decay, config.batch_size, config.schedule.name,
          tuple(config.schedule.boundaries), config.schedule.decay_factor, config.augment.geometry,
          config.augment.crop_padding) == ("sgd", 0.1, 0.9, False, 1e-4, 128, "step", (0.5, 0.75),
                                   0.1, "pad_crop_flip", 4)
  assert (config.augment.cutout, config.augment.mixup_alpha, config.optim.label_smoothing,
          config.optim.ema_decay) == (0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("name", HE_V1 + HE_V2)
def test_he_configs_validation_protocol_holds_out_5k_for_64k_iterations(name):
  config = load(name, "validation")
  validate_config(config)
  assert (config.protocol, config.data.train_split, config.data.validation_split) == (
      "validation", "train[:45000]", "train[45000:]")
  assert config.num_epochs * (45_000 // 128) == 63_882


def test_unknown_protocol_names_the_valid_ones():
  with pytest.raises(ValueError, match="paper, validation"):
    load("resnet20v1_cifar10", "papr")


def schedule(config):
  steps_per_epoch = (50_000 if config.protocol == "paper" else 45_000) // config.batch_size
  fn = lr_schedule(config, steps_per_epoch)
  return lambda step: float(fn(step))


@pytest.mark.parametrize("name", ("resnet110v1_cifar10",) + HE_V2)
def test_warm_phase_is_lr_0_01_for_400_iterations_then_0_1(name):
  for protocol in ("paper", "validation"):
    lr = schedule(load(name, protocol))
    assert lr(0) == pytest.approx(0.01) and lr(399) == pytest.approx(0.01)
    assert lr(400) == pytest.approx(0.1) and lr(20_000) == pytest.approx(0.1)


@pytest.mark.parametrize("name", HE_V1[:-1])  # all but ResNet-110
def test_shallow_v1_nets_start_at_0_1(name):
  assert schedule(load(name))(0) == pytest.approx(0.1)


@pytest.mark.parametrize("name", HE_V1 + HE_V2)
def test_lr_drops_at_half_and_three_quarters_of_the_run(name):
  lr = schedule(load(name))
  assert lr(31_979) == pytest.approx(0.1) and lr(31_980) == pytest.approx(0.01)
  assert lr(47_969) == pytest.approx(0.01) and lr(47_970) == pytest.approx(0.001)
  assert lr(63_959) == pytest.approx(0.001)


def strided_delta_conv(padding: str, x: jnp.ndarray) -> jnp.ndarray:
  """A 3x3 stride-2 conv whose kernel is 1 at the centre: it samples x."""
  conv, _, _ = LayerSpec(conv=Conv(padding)).layers(train=False)
  module = conv(1, (3, 3), (2, 2))
  kernel = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
  return module.apply({"params": {"kernel": kernel}}, x)


def test_symmetric_padding_centres_strided_convs_on_the_shortcut_grid():
  """Torch's (1, 1) padding: the strided 3x3 sees the pixels x[::2] that the
  option-A / 1x1 shortcut keeps; TensorFlow's SAME ((0, 1)) is one pixel off."""
  x = jnp.arange(8 * 8, dtype=jnp.float32).reshape(1, 8, 8, 1)
  np.testing.assert_array_equal(strided_delta_conv("symmetric", x), x[:, ::2, ::2])
  np.testing.assert_array_equal(strided_delta_conv("same", x), x[:, 1::2, 1::2])


def test_old_same_padding_stays_available_and_unknown_padding_is_refused():
  x = jnp.ones((2, 32, 32, 3))
  for padding in ("symmetric", "same"):
    model = create_model("resnet20_v1", num_classes=10, spec=LayerSpec(conv=Conv(padding)))
    variables = model.init(jax.random.key(0), x, train=False)
    assert model.apply(variables, x, train=False).shape == (2, 10)
  config = load("resnet20v1_cifar10")
  config.layers.conv_padding = "tf"
  with pytest.raises(UserError, match="^unknown config.layers.conv_padding 'tf'; valid: same, "
                     "symmetric$"):
    validate_config(config)


def test_symmetric_and_same_padding_agree_at_stride_1_only():
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 3, 5))
  out = {}
  for padding in ("symmetric", "same"):
    conv, _, _ = LayerSpec(conv=Conv(padding)).layers(train=False)
    for stride in (1, 2):
      out[padding, stride] = conv(5, (3, 3), (stride, stride)).apply(
          {"params": {"kernel": kernel}}, x)
  np.testing.assert_allclose(out["symmetric", 1], out["same", 1], rtol=1e-6, atol=1e-6)
  assert out["symmetric", 2].shape == out["same", 2].shape == (2, 8, 8, 5)
  assert not np.allclose(out["symmetric", 2], out["same", 2])


def branch_ends(params, name):
  """The parameters that end each residual branch: the last BN scale of
  post-activation blocks, the last conv kernel of pre-activation ones."""
  blocks = [v for k, v in params.items() if k.startswith("stage")]
  if name == "bn":
    return [b[sorted(k for k in b if k.startswith("BatchNorm"))[-1]]["scale"] for b in blocks]
  return [b[sorted(k for k in b if k.startswith("Conv"))[-1]]["kernel"] for b in blocks]


# The smallest member of each family (one block per stage) keeps the test fast.
@pytest.mark.parametrize("model,kwargs,end", [
    ("resnet8_v1", {}, "bn"), ("resnet8_v2", {}, "conv"),
    ("resnext29_2x32d", {"depth": 11}, "bn"), ("wrn16_4", {"depth": 10}, "conv")])
def test_zero_init_last_starts_every_block_as_the_identity(model, kwargs, end):
  x = jnp.ones((1, 8, 8, 3))
  for zero in (False, True):
    m = create_model(model, num_classes=10, zero_init_last=zero, **kwargs)
    params = m.init(jax.random.key(0), x, train=False)["params"]
    ends = branch_ends(params, end)
    assert len(ends) == 3
    assert all(bool(jnp.all(e == 0)) == zero for e in ends)


def test_resnext_config_zero_inits_and_warms_up_wrn_configs_do_not():
  resnext = load("resnext29_8x64d_cifar10")
  assert resnext.model_kwargs.zero_init_last and resnext.schedule.warmup_epochs == 1.0
  # BatchNorm over 16 images, as on the authors' 8 GPUs at batch 128.
  assert resnext.batch_size // resnext.optim.grad_accum_steps == 16
  for name in ("wrn16_4_cifar10", "wrn28_10_cifar10"):
    assert not load(name).model_kwargs.get("zero_init_last", False)


def test_paper_protocol_refuses_a_validation_split():
  config = load("resnet20v1_cifar10")
  config.data.validation_split = "train[45000:]"
  with pytest.raises(UserError, match="protocol='paper' reports the final model"):
    validate_config(config)


def test_wrn28_10_trivialaugment_follows_muller_and_hutter():
  """TrivialAugment's WRN-28-10 CIFAR-10 recipe (automl/trivialaugment,
  confs/wresnet28x10_cifar10_b128_maxlr.1_*widesesp_nowarmup_200epochs.yaml)."""
  c = load("wrn28_10_cifar10_trivialaugment")
  validate_config(c)
  assert (c.model, c.model_kwargs.dropout_rate) == ("wrn28_10", 0.0)
  assert (c.augment.policy, c.augment.geometry, c.augment.crop_padding, c.augment.cutout) == (
      "trivialaugment_wide", "pad_crop_flip", 4, 16)
  assert (c.optim.name, c.optim.nesterov, c.optim.momentum, c.learning_rate,
          c.optim.weight_decay) == ("sgd", True, 0.9, 0.1, 5e-4)
  assert (c.schedule.name, c.schedule.warmup_epochs, c.batch_size, c.num_epochs) == ("cosine", 0.0,
                                                                                     128, 200)
  assert (c.protocol, c.data.train_split, c.data.validation_split) == ("paper", "train", "")
  assert (c.augment.random_erasing, c.augment.mixup_alpha, c.augment.cutmix_alpha, c.optim.sam_rho,
          c.optim.label_smoothing) == (0.0, 0.0, 0.0, 0.0, 0.0)
