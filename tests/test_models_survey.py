"""The survey architectures: parameter counts by hand from each paper's layout
table, against the paper's printed number, and shapes of the forward and
backward passes on CIFAR and MNIST sizes (traced with eval_shape: no compile),
plus one small real gradient step through SE, dropout and the trainer's call."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn.errors import UserError
from cnn.models import create_model
from cnn.models.layers import LayerSpec, Norm
from cnn.models.inception import INCEPTION_SMALL
from cnn.models.mobilenet import MOBILENET_V1

CIFAR, MNIST = (2, 32, 32, 3), (2, 28, 28, 1)


def variables_of(name, shape=(1, 32, 32, 3), spec=LayerSpec(), **kwargs):
  model = create_model(name, num_classes=10, spec=spec, **kwargs)
  return model, jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(shape), train=False))


def num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def count(name, **kwargs) -> int:
  return num_params(variables_of(name, **kwargs)[1]["params"])


def shapes_by_path(tree) -> dict[str, tuple]:
  return {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def bn(c: int) -> int:
  return 2 * c  # BatchNorm scale + bias


# --- hand counts from the papers' tables ------------------------------------------------

def paper_wrn_params(depth: int, k: int) -> int:
  """Zagoruyko & Komodakis (2016) Table 1: 3x3 conv 16, three stages of
  N = (d-4)/6 pre-act blocks (BN, 3x3, BN, 3x3) at 16k/32k/64k, a bias-free
  1x1 projection where the width changes, final BN, dense 64k -> 10."""
  total, cin = 27 * 16, 16
  for width in (16 * k, 32 * k, 64 * k):
    for _ in range((depth - 4) // 6):
      total += bn(cin) + 9 * cin * width + bn(width) + 9 * width * width
      total += cin * width if cin != width else 0
      cin = width
  return total + bn(cin) + cin * 10 + 10


def paper_resnext29_params(c: int, d: int) -> int:
  """Xie et al. (2017) Sec. 5.3 / Fig. 3c: 3x3 conv 64 + BN, three stages of
  3 blocks (1x1 to C*d*n/64, grouped 3x3 with C groups, 1x1 to 4n; BN after
  each) for n = 64/128/256, 1x1 projection + BN where the shape changes."""
  total, cin = 27 * 64 + bn(64), 64
  for n in (64, 128, 256):
    inner, out = c * d * n // 64, 4 * n
    for _ in range(3):
      total += cin * inner + 9 * inner * inner // c + inner * out
      total += bn(inner) * 2 + bn(out)
      total += cin * out + bn(out) if cin != out else 0
      cin = out
  return total + cin * 10 + 10


def paper_densenet_bc_params(depth: int, k: int) -> int:
  """Huang et al. (2017) Sec. 3-4: 3x3 conv 2k, three dense blocks of
  (L-4)/6 layers (BN, 1x1 to 4k, BN, 3x3 to k), transitions (BN, 1x1 to half
  the channels), final BN, dense."""
  c = 2 * k
  total = 27 * c
  for b in range(3):
    for _ in range((depth - 4) // 6):
      total += bn(c) + c * 4 * k + bn(4 * k) + 9 * 4 * k * k
      c += k
    if b < 2:
      total += bn(c) + c * (c // 2)
      c //= 2
  return total + bn(c) + c * 10 + 10


def inception_small_channels() -> list[tuple[int, int, int]]:
  """(kernel area, input channels, output channels) of every conv in Fig. 3
  of Zhang et al. (2017)."""
  convs, cin = [(9, 3, 96)], 96
  for kind, *widths in INCEPTION_SMALL:
    if kind == "inception":
      convs += [(1, cin, widths[0]), (9, cin, widths[1])]
      cin = sum(widths)
    else:  # the max-pool branch passes its input channels through
      convs.append((9, cin, widths[0]))
      cin += widths[0]
  return convs


def paper_mobilenet_v1_params(classes: int) -> int:
  """Howard et al. (2017) Table 1: 3x3 conv 32 + BN, then per block a
  depthwise 3x3 + BN and a pointwise 1x1 + BN, dense 1024 -> classes."""
  total, cin = 27 * 32 + bn(32), 32
  for cout, _ in MOBILENET_V1:
    total += 9 * cin + bn(cin) + cin * cout + bn(cout)
    cin = cout
  return total + cin * classes + classes


# --- parameter counts against the papers --------------------------------------------------

@pytest.mark.parametrize("name,depth,k,paper_millions", [
    ("wrn16_4", 16, 4, 2.7), ("wrn16_8", 16, 8, 11.0), ("wrn28_10", 28, 10, 36.5),
    ("wrn40_4", 40, 4, 8.9)])
def test_wide_resnet_matches_paper(name, depth, k, paper_millions):
  """Paper: Table 4 / Sec. 3 (WRN-28-10 36.5M, WRN-16-4 2.7M, 16-8 11.0M,
  40-4 8.9M); the authors' PyTorch code prints 36,479,194 for WRN-28-10."""
  n = count(name)
  assert n == paper_wrn_params(depth, k)
  assert abs(n / 1e6 - paper_millions) / paper_millions < 0.02
  if name == "wrn28_10":
    assert n == 36_479_194
  assert count(name, dropout_rate=0.3) == n  # dropout has no parameters


@pytest.mark.parametrize("name,c,d,paper_millions", [
    ("resnext29_8x64d", 8, 64, 34.4), ("resnext29_16x64d", 16, 64, 68.1),
    ("resnext29_2x32d", 2, 32, None)])
def test_resnext29_matches_paper(name, c, d, paper_millions):
  """Xie et al. (2017) Table 7: 34.4M (8x64d) and 68.1M (16x64d).
  2x32d is not in the paper; by the same template it has 3,753,034
  parameters (3.75M, not ~2.3M): the output widths 256/512/1024 are fixed by
  the template whatever C x d, and the 1x1 convs and projections into and out
  of them (e.g. 1024 -> 256 -> 1024 in each of the last three blocks, and the
  512 -> 1024 projection, 0.52M alone) dominate once the grouped 3x3s are
  small."""
  n = count(name)
  assert n == paper_resnext29_params(c, d)
  if paper_millions is None:
    assert n == 3_753_034
  else:
    assert abs(n / 1e6 - paper_millions) / paper_millions < 0.01


def test_densenet_bc100_k12_matches_paper():
  """Huang et al. (2017) Table 2: DenseNet-BC (L=100, k=12), 0.8M; the
  authors' and most re-implementations' exact count is 769,162."""
  n = count("densenet_bc100_k12")
  assert n == paper_densenet_bc_params(100, 12) == 769_162
  assert abs(n / 1e6 - 0.8) < 0.05
  # Plain DenseNet (L=40, k=12, no bottleneck or compression): Table 2, 1.0M.
  assert abs(count("densenet40_k12") / 1e6 - 1.0) < 0.05


def test_inception_small_matches_paper():
  """Zhang et al. (2017) Table 1: 1,649,402 parameters. The paper's TF model
  has one parameter per conv channel besides the weights (TF's batch_norm
  learns only the offset by default, scale=False); ours learns BN's scale
  too, which adds exactly one parameter per conv channel: 1,712 channels."""
  convs = inception_small_channels()
  weights = sum(area * cin * cout for area, cin, cout in convs)
  channels = sum(cout for _, _, cout in convs)
  assert channels == 1712
  head = 336 * 10 + 10
  assert weights + channels + head == 1_649_402  # the paper's count, rebuilt
  assert count("inception_small") == weights + 2 * channels + head == 1_649_402 + 1712


def test_mobilenet_v1_matches_paper_minus_imagenet_classifier():
  """Howard et al. (2017) Table 8: 1.0 MobileNet-224 has 4.2M parameters,
  exactly 4,231,976 (Keras' trainable count); the 32x32 version only changes
  strides, so it is that minus the 1000-way classifier plus a 10-way one."""
  assert paper_mobilenet_v1_params(1000) == 4_231_976
  n = count("mobilenet_v1")
  imagenet_head, cifar_head = 1024 * 1000 + 1000, 1024 * 10 + 10
  assert n == paper_mobilenet_v1_params(10) == 4_231_976 - imagenet_head + cifar_head == 3_217_226


def se_params(channels: int, r: int = 16) -> int:
  """Hu et al. (2018) Sec. 3: FC C -> C/r and C/r -> C, with biases."""
  hidden = max(1, channels // r)
  return 2 * channels * hidden + hidden + channels


@pytest.mark.parametrize("name,kwargs,block_widths", [
    ("resnet20_v1", {}, [16] * 3 + [32] * 3 + [64] * 3),
    ("resnet56_v2", {}, [16] * 9 + [32] * 9 + [64] * 9),
    ("resnet164_v2", {"depth": 29}, [64] * 3 + [128] * 3 + [256] * 3),  # bottleneck v2
    ("wrn16_4", {}, [64] * 2 + [128] * 2 + [256] * 2),
    ("resnext29_2x32d", {}, [256] * 3 + [512] * 3 + [1024] * 3)])  # bottleneck v1
def test_squeeze_excite_adds_exactly_its_parameters(name, kwargs, block_widths):
  """One SE per block on the block's output channels, nothing renamed."""
  _, plain = variables_of(name, **kwargs)
  _, se = variables_of(name, se_reduction=16, **kwargs)
  assert num_params(se["params"]) - num_params(plain["params"]) == sum(
      se_params(c) for c in block_widths)
  assert shapes_by_path(plain["params"]) == {
      path: shape for path, shape in shapes_by_path(se["params"]).items() if "'se'" not in path}


def test_se_resnet_names_are_the_resnets_with_se16():
  for depth, version in ((20, "v2"), (56, "v1")):
    _, named = variables_of(f"se_resnet{depth}_{version}")
    _, switched = variables_of(f"resnet{depth}_{version}", se_reduction=16)
    assert jax.tree.map(jnp.shape, named) == jax.tree.map(jnp.shape, switched)
  assert count("se_resnet20_v1") == 272_474 + 3 * (se_params(16) + se_params(32) + se_params(64))


def test_resnet9_matches_page():
  """Page (2018): 3x3 convs 3-64, 64-128, 2x 128-128, 128-256, 256-512,
  2x 512-512, BN on each, a 512-10 linear layer without bias: "6.5M"."""
  convs = [(3, 64), (64, 128), (128, 128), (128, 128), (128, 256), (256, 512), (512, 512),
           (512, 512)]
  expected = sum(9 * i * o + bn(o) for i, o in convs) + 512 * 10
  assert expected == 6_573_120
  assert count("resnet9") == expected


# --- shapes of forward and backward passes --------------------------------------------------

FAMILIES = ["wrn16_4", "resnext29_2x32d", "densenet_bc100_k12", "inception_small",
            "mobilenet_v1", "se_resnet20_v2", "resnet9"]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("shape", [CIFAR, MNIST], ids=["cifar", "mnist"])
def test_forward_and_backward_shapes(name, shape):
  """The trainer's call: train=True, batch_stats mutable, a dropout rng."""
  kwargs = {"dropout_rate": 0.3} if name.startswith(("wrn", "densenet")) else {}
  if name.startswith("densenet"):
    kwargs["depth"] = 40  # same code as L=100 with 6 layers per block: a third of the tracing
  model, variables = variables_of(name, shape, **kwargs)

  def loss(params, batch_stats):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                  jnp.zeros(shape), train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.key(1)})
    return jnp.mean(logits), (logits, updates)

  grads, (logits, updates) = jax.eval_shape(
      jax.grad(loss, has_aux=True), variables["params"], variables["batch_stats"])
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert jax.tree.map(jnp.shape, grads) == jax.tree.map(jnp.shape, variables["params"])
  assert jax.tree.map(jnp.shape, updates["batch_stats"]) == jax.tree.map(
      jnp.shape, variables["batch_stats"])


@pytest.mark.parametrize("name", FAMILIES)
def test_bfloat16_compute_float32_params_and_per_device_bn(name):
  kwargs = {"depth": 40} if name.startswith("densenet") else {}  # as above
  model, variables = variables_of(name, CIFAR, LayerSpec(dtype=jnp.bfloat16, norm=Norm(groups=2)),
                                 **kwargs)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, _ = jax.eval_shape(lambda v: model.apply(
      v, jnp.zeros(CIFAR), train=True, mutable=["batch_stats"]), variables)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32


def test_one_real_gradient_step_reaches_every_parameter():
  """A tiny WRN-10-1 with dropout and SE, one compiled gradient step: every
  parameter, SE's included, gets a finite non-zero gradient, BN statistics
  move, and dropout makes the training loss depend on the rng. Variables are
  drawn with numpy on eval_shape's shapes: compiling flax's random init costs
  more than the step itself on a CPU."""
  model, shapes = variables_of("wrn16_4", CIFAR, depth=10, widen_factor=1, dropout_rate=0.3,
                               se_reduction=4)
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda p, s: (np.ones(s.shape, np.float32) if jax.tree_util.keystr(p).endswith(
          ("['scale']", "['var']")) else 0.3 * rng.standard_normal(s.shape).astype(np.float32)),
      shapes)
  x = rng.standard_normal(CIFAR).astype(np.float32)
  onehot = np.eye(10, dtype=np.float32)[:2]

  @jax.jit
  def step(variables, key):
    def loss(params):
      logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": key})
      return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), updates
    return jax.value_and_grad(loss, has_aux=True)(variables["params"])

  (value, updates), grads = step(variables, jax.random.key(2))
  (other_key_value, _), _ = step(variables, jax.random.key(3))  # same compiled step
  assert np.isfinite(value) and value != other_key_value
  grads_by_path = {jax.tree_util.keystr(p): g
                   for p, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert any("'se'" in path for path in grads_by_path)
  for path, g in grads_by_path.items():
    assert np.all(np.isfinite(g)) and np.any(g != 0), path
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), updates["batch_stats"],
                       variables["batch_stats"])
  assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("name,kwargs,message", [
    ("wrn28_10", {"depth": 27}, "6N\\+4"), ("resnext29_8x64d", {"depth": 30}, "9n\\+2"),
    ("densenet_bc100_k12", {"depth": 99}, "6n\\+4")])
def test_bad_depths_are_user_errors(name, kwargs, message):
  with pytest.raises(UserError, match=message):
    variables_of(name, **kwargs)
