"""The auto-augment policies as pure functions of (uint8 image, key).

RandAugment (Cubuk et al. 2020), TrivialAugmentWide (Mueller & Hutter 2021)
and AutoAugment's CIFAR-10 policy (Cubuk et al. 2019) with torchvision's op
spaces (transforms/autoaugment.py), magnitudes bit for bit, and ops.py's
PIL-exact ops. A policy is a table of choices, one row per (op, magnitude,
sign) it can apply, and a draw of rows from the key:

  * RandAugment: `num_ops` ops uniformly from 14 with replacement, each at
    magnitude bin `magnitude` of 31, signed ops negated with probability 1/2;
  * TrivialAugmentWide: one op uniformly from 14, a bin uniformly from 31
    (the "wide" ranges), the sign likewise;
  * AutoAugment CIFAR-10: one of 25 sub-policies, each of its two
    (op, probability, bin of 10) applied with its probability.

Every row is applied as one warp, one lookup table and one blend (ops.py),
whichever op it is: under `jax.vmap` each image has its own op, so every
candidate is computed anyway, and these three cost a fraction of the
fifteen ops. The geometric rows carry PIL's fixed-point warp computed on the
host in double precision, so their pixels are PIL's too.

Magnitudes are torchvision's float32 `torch.linspace` values, including its
rounding: TrivialAugmentWide's translate bin 15 is 15.999999, which `int()`
makes a 15-pixel shift.
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cnn.augment import ops
from cnn.errors import UserError, unknown_name

PolicyFn = Callable[[jax.Array, jax.Array], jax.Array]  # (uint8 image [H, W, C], key) -> image

RANDAUGMENT_BINS = 31
AUTOAUGMENT_BINS = 10

# AutoAugment's CIFAR-10 policy as torchvision lists it: (op, probability, bin of 10).
AUTOAUGMENT_CIFAR10 = (
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)


# --- torchvision's magnitudes -------------------------------------------------

def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
  """torch.linspace's float32 values bit for bit: step = (end - start) /
  (steps - 1) in float32, then start + step * i for the first half and
  end - step * (steps - 1 - i) for the rest, each a fused multiply-add (one
  rounding, done here exactly in float64). Checked against torch 2.13."""
  start32, end32 = np.float32(start), np.float32(end)
  step = float((end32 - start32) / np.float32(steps - 1))
  i = np.arange(steps)
  first, second = float(start32) + step * i, float(end32) - step * (steps - 1 - i)
  return np.where(i < steps // 2, first, second).astype(np.float32)


def posterize_bits(num_bins: int, levels: int) -> np.ndarray:
  """8 - round(arange(num_bins) / ((num_bins - 1) / levels)), in float32 with
  round half to even, as torch computes it."""
  quotient = np.arange(num_bins, dtype=np.float32) / np.float32((num_bins - 1) / levels)
  return 8 - np.round(quotient).astype(np.int32)


def augmentation_space(num_bins: int, height: int, width: int, wide: bool = False
                       ) -> dict[str, tuple[np.ndarray | None, bool]]:
  """torchvision's `_augmentation_space`: op -> (magnitudes or None, signed).
  RandAugment's and AutoAugment's (`wide=False`; AutoAugment has no Identity
  and adds Invert) or TrivialAugmentWide's."""
  shear, enhance, rotate, levels = (0.99, 0.99, 135.0, 6) if wide else (0.3, 0.9, 30.0, 4)
  translate_x, translate_y = (32.0, 32.0) if wide else (150.0 / 331.0 * width,
                                                        150.0 / 331.0 * height)
  space = {
      "Identity": (None, False),
      "ShearX": (torch_linspace(0.0, shear, num_bins), True),
      "ShearY": (torch_linspace(0.0, shear, num_bins), True),
      "TranslateX": (torch_linspace(0.0, translate_x, num_bins), True),
      "TranslateY": (torch_linspace(0.0, translate_y, num_bins), True),
      "Rotate": (torch_linspace(0.0, rotate, num_bins), True),
  }
  for name in ("Brightness", "Color", "Contrast", "Sharpness"):
    space[name] = (torch_linspace(0.0, enhance, num_bins), True)
  space["Posterize"] = (posterize_bits(num_bins, levels), False)
  space["Solarize"] = (torch_linspace(255.0, 0.0, num_bins), False)
  space["AutoContrast"] = space["Equalize"] = space["Invert"] = (None, False)
  return space


# --- the table of choices -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Choices:
  """Rows of (op, magnitude, warp) a policy draws from; the last row is the
  identity (what an AutoAugment op that does not fire applies)."""
  op: np.ndarray  # int32 [rows]: index into ops.NAMES
  magnitude: np.ndarray  # float32 [rows]: as torchvision passes it to the op, signed
  coefficients: np.ndarray  # int32 [rows, 6]: the op's 16.16 warp (identity if not geometric)

  @property
  def identity_row(self) -> int:
    return len(self.op) - 1


def make_choices(rows: list[tuple[str, float]], height: int, width: int) -> Choices:
  """Choices from (op name, signed magnitude) rows, plus the identity row."""
  rows = [*rows, ("Identity", 0.0)]
  return Choices(
      op=np.array([ops.NAMES.index(name) for name, _ in rows], np.int32),
      magnitude=np.array([m for _, m in rows], np.float32),
      coefficients=np.array([ops.pil_coefficients(name, m, height, width) for name, m in rows],
                            np.int32))


def _signed_rows(space: dict, names: tuple[str, ...], bin_index: int | None) -> list:
  """For each op, the rows (op, m) and (op, -m) at bin `bin_index`: row
  2 * op + negative. Unsigned ops get m twice, ops without a magnitude 0.0."""
  rows = []
  for name in names:
    magnitudes, signed = space[name]
    m = 0.0 if magnitudes is None or bin_index is None else float(magnitudes[bin_index])
    rows += [(name, m), (name, -m if signed else m)]
  return rows


RANDAUGMENT_OPS = ops.NAMES[:14]  # torchvision's RandAugment / TrivialAugmentWide op order


@functools.cache
def randaugment_choices(magnitude: int, height: int, width: int) -> Choices:
  """Row 2 * op + negative, op in RANDAUGMENT_OPS, at bin `magnitude`."""
  space = augmentation_space(RANDAUGMENT_BINS, height, width)
  return make_choices(_signed_rows(space, RANDAUGMENT_OPS, magnitude), height, width)


@functools.cache
def trivialaugment_wide_choices(height: int, width: int) -> Choices:
  """Row 2 * (31 * op + bin) + negative."""
  space = augmentation_space(RANDAUGMENT_BINS, height, width, wide=True)
  rows = []
  for name in RANDAUGMENT_OPS:
    for bin_index in range(RANDAUGMENT_BINS):
      rows += _signed_rows(space, (name,), bin_index)
  return make_choices(rows, height, width)


@functools.cache
def autoaugment_cifar10_choices(height: int, width: int) -> Choices:
  """Row 2 * (2 * sub-policy + slot) + negative."""
  space = augmentation_space(AUTOAUGMENT_BINS, height, width)
  rows = []
  for sub_policy in AUTOAUGMENT_CIFAR10:
    for name, _, bin_index in sub_policy:
      rows += _signed_rows(space, (name,), bin_index)
  return make_choices(rows, height, width)


# --- draws: key -> int32 [steps], the rows to apply in order ------------------
# One jax.random call per draw: each is a threefry hash that XLA compiles
# separately (about 0.4 s each on 2 CPU cores).

def draw_randaugment(key: jax.Array, num_ops: int) -> jax.Array:
  """num_ops rows 2 * op + negative, op uniform over 14 (with replacement)."""
  bounds = jnp.array([[len(RANDAUGMENT_OPS)], [2]])
  op, negative = jax.random.randint(key, (2, num_ops), 0, bounds)
  return 2 * op + negative


def draw_trivialaugment_wide(key: jax.Array) -> jax.Array:
  """One row 2 * (31 * op + bin) + negative, each uniform."""
  bounds = jnp.array([[len(RANDAUGMENT_OPS)], [RANDAUGMENT_BINS], [2]])
  op, bin_index, negative = jax.random.randint(key, (3, 1), 0, bounds)
  return 2 * (RANDAUGMENT_BINS * op + bin_index) + negative


AUTOAUGMENT_CIFAR10_PROBABILITIES = np.array(
    [[p for _, p, _ in sub_policy] for sub_policy in AUTOAUGMENT_CIFAR10], np.float32)


def draw_autoaugment_cifar10(key: jax.Array) -> jax.Array:
  """A sub-policy, then each slot fires if u <= its probability, u uniform on
  [0, 1) in steps of 2^-24 (torchvision's `probs[i] <= p`, torch.rand's
  float32 being 24 random bits); a slot that does not fire is the identity
  row."""
  bounds = jnp.array([len(AUTOAUGMENT_CIFAR10), 2, 2, 2**24, 2**24])
  sub_policy, *draws = jax.random.randint(key, (5,), 0, bounds)
  negative, u = jnp.stack(draws[:2]), jnp.stack(draws[2:]) / 2**24
  fires = u <= jnp.asarray(AUTOAUGMENT_CIFAR10_PROBABILITIES)[sub_policy]
  rows = 2 * (2 * sub_policy + jnp.arange(2)) + negative
  return jnp.where(fires, rows, len(AUTOAUGMENT_CIFAR10) * 4)  # the identity row


# --- applying rows --------------------------------------------------------------

def _branches(first: Callable, named: dict) -> tuple[np.ndarray, list]:
  """[first, *named.values()] and, for each op of ops.NAMES, its index there
  (0 for the ops not named)."""
  index = [1 + list(named).index(n) if n in named else 0 for n in ops.NAMES]
  return np.array(index, np.int32), [first, *named.values()]


_LUT_BRANCH, _LUTS = _branches(ops.identity_lut, ops.LUTS)
_BLEND_BRANCH, _DEGENERATES = _branches(ops.black, ops.DEGENERATES)


def apply_row(image: jax.Array, choices: Choices, row: jax.Array) -> jax.Array:
  """Applies row `row` of `choices` as warp -> lookup table -> blend, the
  blocks its op does not use being exact identities (identity warp, identity
  table, blend factor 1). All six tables and four degenerate images are
  computed and one of each is picked: under jax.vmap lax.switch computes them
  all too, only slower (7 vs 4 ms per 128 CIFAR images on 2 CPU cores)."""
  op = jnp.asarray(choices.op)[row]
  magnitude = jnp.asarray(choices.magnitude)[row]
  image = ops.warp(image, jnp.asarray(choices.coefficients)[row])
  luts = jnp.stack([lut(image, magnitude) for lut in _LUTS])
  image = ops.apply_lut(image, luts[jnp.asarray(_LUT_BRANCH)[op]])
  blend_branch = jnp.asarray(_BLEND_BRANCH)[op]
  degenerates = jnp.stack([degenerate(image) for degenerate in _DEGENERATES])
  factor = jnp.where(blend_branch > 0, 1.0 + magnitude, 1.0)
  return ops.blend(degenerates[blend_branch], image, factor)


@dataclasses.dataclass(frozen=True)
class Policy:
  """A PolicyFn, `policy(image, key)`, made of the table of its choices for an
  image size and the draw of rows from a key (both exposed for tests)."""
  choices: Callable[[int, int], Choices]  # (height, width) -> Choices
  draw: Callable[[jax.Array], jax.Array]  # key -> int32 [steps]

  def __call__(self, image: jax.Array, key: jax.Array) -> jax.Array:
    choices = self.choices(*image.shape[:2])
    image, _ = jax.lax.scan(lambda x, row: (apply_row(x, choices, row), None), image,
                            self.draw(key))
    return image


def _none(num_ops: int = 2, magnitude: int = 9) -> PolicyFn:
  return lambda image, key: image


def _randaugment(num_ops: int = 2, magnitude: int = 9) -> PolicyFn:
  if not 0 <= magnitude < RANDAUGMENT_BINS:
    raise UserError(f"config.augment.randaugment_magnitude={magnitude} is not one of torchvision's "
                    f"{RANDAUGMENT_BINS} bins; use 0..{RANDAUGMENT_BINS - 1} (default 9)")
  if num_ops < 0:
    raise UserError(f"config.augment.randaugment_num_ops={num_ops} must be 0 or more (default 2)")
  return Policy(functools.partial(randaugment_choices, magnitude),
                functools.partial(draw_randaugment, num_ops=num_ops))


def _trivialaugment_wide(num_ops: int = 2, magnitude: int = 9) -> PolicyFn:
  return Policy(trivialaugment_wide_choices, draw_trivialaugment_wide)


def _autoaugment_cifar10(num_ops: int = 2, magnitude: int = 9) -> PolicyFn:
  return Policy(autoaugment_cifar10_choices, draw_autoaugment_cifar10)


# name -> builder(num_ops, magnitude); num_ops and magnitude are RandAugment's only.
POLICIES: dict[str, Callable[..., PolicyFn]] = {
    "none": _none,
    "randaugment": _randaugment,
    "trivialaugment_wide": _trivialaugment_wide,
    "autoaugment_cifar10": _autoaugment_cifar10,
}


def make_policy(name: str, num_ops: int = 2, magnitude: int = 9) -> PolicyFn:
  """POLICIES[name](num_ops, magnitude); unknown names raise the one-line
  error listing the valid ones."""
  if name not in POLICIES:
    raise unknown_name("auto_augment", name, POLICIES)
  return POLICIES[name](num_ops, magnitude)
