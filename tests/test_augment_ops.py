"""cnn/augment/ops.py and policies.py against PIL and torchvision's tables.

The reference for every op is what torchvision's `_apply_op` does to a PIL
image (nearest neighbour, fill 0), written out below with the PIL calls
torchvision makes; it runs on 64 real CIFAR-10 test images and, for mode "L",
16 MNIST images. Every op must give PIL's pixels exactly, except `rotate` with
a traced float32 angle, whose bound is stated in its test. The policies'
magnitudes are compared with torchvision's published values, written as
literals.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from cnn import datasets
from cnn.augment import ops, policies
from cnn.datasets import archives
from cnn.errors import UserError

# Its module-scoped fixtures are made once: the whole file runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_augment_ops")


def _read(name: str, archive_dir: str, count: int) -> np.ndarray:
  root = datasets.find_archives(datasets.get_spec(name), archive_dir)
  return archives.read(root, name)["test"][0][:count]


@pytest.fixture(scope="module")
def cifar(archive_dir) -> np.ndarray:
  return _read("cifar10", archive_dir, 64)


@pytest.fixture(scope="module")
def mnist(archive_dir) -> np.ndarray:
  return _read("mnist", archive_dir, 16)


# --- the reference: torchvision's _apply_op on PIL images ---------------------

def _affine(image: Image.Image, matrix: tuple) -> Image.Image:
  return image.transform(image.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=0)


def apply_op_pil(image: Image.Image, name: str, m: float) -> Image.Image:
  """torchvision's `_apply_op(image, name, m, NEAREST, fill=None)` for a PIL
  image: the inverse matrices _get_inverse_affine_matrix gives for its calls
  (shear about (0, 0), translate by int(m)), Image.rotate, ImageEnhance with
  1 + m, ImageOps."""
  if name == "ShearX":
    return _affine(image, (1, math.tan(math.radians(math.degrees(math.atan(m)))), 0, 0, 1, 0))
  if name == "ShearY":
    sy = math.radians(math.degrees(math.atan(m)))
    return _affine(image, (1, 0, 0, -(math.sin(0.0 - sy) / math.cos(sy)), 1, 0))
  if name == "TranslateX":
    return _affine(image, (1, 0, -int(m), 0, 1, 0))
  if name == "TranslateY":
    return _affine(image, (1, 0, 0, 0, 1, -int(m)))
  if name == "Rotate":
    return image.rotate(m, Image.NEAREST, fillcolor=0)
  enhance = {"Brightness": ImageEnhance.Brightness, "Color": ImageEnhance.Color,
             "Contrast": ImageEnhance.Contrast, "Sharpness": ImageEnhance.Sharpness}
  if name in enhance:
    return enhance[name](image).enhance(1.0 + m)
  if name == "Posterize":
    return ImageOps.posterize(image, int(m))
  if name == "Solarize":
    return ImageOps.solarize(image, m)
  simple = {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize,
            "Invert": ImageOps.invert, "Identity": lambda x: x}
  return simple[name](image)


def pil_reference(images: np.ndarray, steps) -> np.ndarray:
  """steps[i] = [(name, magnitude), ...] applied to image i in PIL."""
  out = []
  for array, image_steps in zip(images, steps):
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    for name, m in image_steps:
      image = apply_op_pil(image, name, m)
    out.append(np.asarray(image).reshape(array.shape))
  return np.stack(out)


# --- the ops ----------------------------------------------------------------------

@functools.cache
def _ops_fn():
  """(images [N, H, W, C], op index, magnitude) -> images, jitted once per shape
  with the magnitude traced."""
  def one(image, op, magnitude):
    return jax.lax.switch(op, list(ops.OPS.values()), image, magnitude)
  return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def differing_fraction(images: np.ndarray, name: str, magnitude: float) -> float:
  m = np.float32(magnitude)
  ours = np.asarray(_ops_fn()(images, ops.NAMES.index(name), m))
  assert ours.dtype == np.uint8 and ours.shape == images.shape
  return float(np.mean(ours != pil_reference(images, [[(name, float(m))]] * len(images))))


# Policy extremes and signs: RandAugment's bin 9 and 30, TrivialAugmentWide's
# bins 1, 15 and 30, AutoAugment's bins, magnitude 0.
SHEAR = (0.0, 0.09, -0.09, 0.3, -0.3, 0.26666668, 0.495, 0.99, -0.99)
TRANSLATE = (0.0, 4.3504534, -4.3504534, 14.50151, -14.50151, 12.688822, -3.8066466, 15.999999,
             -15.999999, 32.0, -32.0)
ENHANCE = (0.0, 0.27, -0.27, 0.9, -0.9, 0.033, -0.033, 0.99, -0.99, 0.5)
MAGNITUDES = {
    "Identity": (0.0,), "ShearX": SHEAR, "ShearY": SHEAR, "TranslateX": TRANSLATE,
    "TranslateY": TRANSLATE, "Brightness": ENHANCE, "Color": ENHANCE, "Contrast": ENHANCE,
    "Sharpness": ENHANCE, "Posterize": (8, 7, 6, 5, 4, 3, 2, 1),
    "Solarize": (255.0, 246.5, 178.5, 127.5, 8.5, 0.0, 226.66667, 198.33333, 170.0, 141.66666,
                 113.333336, 85.0, 56.666668, 28.333334, 128.0),
    "AutoContrast": (0.0,), "Equalize": (0.0,), "Invert": (0.0,),
}


@pytest.mark.parametrize("name", sorted(MAGNITUDES))
def test_op_equals_pil_exactly(name, cifar, mnist):
  """Tolerance: none, every pixel of every image at every magnitude."""
  for images in (cifar, mnist):
    for m in MAGNITUDES[name]:
      assert differing_fraction(images, name, m) == 0.0, (name, m, images.shape)


def test_rotate_equals_pil(cifar, mnist):
  """float32 cos/sin put about 1 angle in 10 one 16.16 unit off PIL's double
  coefficients; that moves a pixel only where a sampling point lies within
  2^-16 px of a pixel edge (4e-6 of pixels over random angles in +-135).
  Tolerance: 1e-4 of the pixels for any angle; these angles (policy bins
  and signs, and the 90/180 degree fast paths) measure 0."""
  for images in (cifar, mnist):
    for degrees in (0.0, 9.0, -9.0, 30.0, -30.0, 6.6666665, -3.3333333, 4.5, 67.5, -121.5,
                    90.0, -90.0, 180.0, 135.0, -135.0, 17.0, 1.0):
      assert differing_fraction(images, "Rotate", degrees) <= 1e-4, degrees


def test_rotate_with_pil_coefficients_is_exact(cifar):
  """What the policies use: coefficients computed on the host in double
  precision. Tolerance: none."""
  angles = np.linspace(-135.0, 135.0, 181, dtype=np.float32)
  coefficients = np.array([ops.pil_coefficients("Rotate", float(a), 32, 32) for a in angles])
  warp = jax.jit(jax.vmap(jax.vmap(ops.warp, (0, None)), (None, 0)))
  ours = np.asarray(warp(cifar[:16], coefficients))
  for a, out in zip(angles, ours):
    assert np.array_equal(out, pil_reference(cifar[:16], [[("Rotate", float(a))]] * 16)), a


def test_autocontrast_table_equals_pil_for_every_range():
  """PIL builds autocontrast's table in double precision, which truncates
  some exact integers one lower (e.g. range 0..25 maps 25 to 254); ops.py
  lists those entries. Every one of the 32,640 ranges lo < hi, on images
  holding every level of the range. Tolerance: none."""
  pairs = np.array([(lo, hi) for lo in range(256) for hi in range(lo + 1, 256)])
  images = np.clip(np.arange(256)[None, :], pairs[:, :1], pairs[:, 1:]).astype(np.uint8)
  images = images.reshape(-1, 16, 16, 1)
  ours = np.asarray(jax.jit(jax.vmap(ops.autocontrast))(images))
  theirs = np.stack([np.asarray(ImageOps.autocontrast(Image.fromarray(x[..., 0]))) for x in images])
  assert np.array_equal(ours[..., 0], theirs)


def test_dimmed_images_exercise_the_table_ops(cifar):
  """Real images squeezed into narrow ranges (as dark or washed-out photos
  are) reach the autocontrast entries PIL truncates and equalize's small
  steps. Tolerance: none."""
  for scale, offset in ((10, 0), (7, 3), (25, 100), (3, 40)):
    images = (cifar // scale + offset).astype(np.uint8)
    for name in ("AutoContrast", "Equalize", "Contrast", "Solarize"):
      assert differing_fraction(images, name, 0.3 if name == "Contrast" else 20.0) == 0.0


def test_grayscale_image_colour_is_identity(mnist):
  """Mode "L": Color blends the image with itself."""
  out = np.asarray(_ops_fn()(mnist, ops.NAMES.index("Color"), np.float32(0.9)))
  np.testing.assert_array_equal(out, mnist)


# --- the policies' tables -----------------------------------------------------

def _positive(choices: policies.Choices) -> dict[str, float]:
  return {ops.NAMES[op]: float(m) for op, m in zip(choices.op[:-1:2], choices.magnitude[:-1:2])}


def test_randaugment_bin_9_is_torchvisions():
  """RandAugment(magnitude=9) on 32x32, from torchvision's _augmentation_space
  (31 bins): shear 0.3 * 9/30, translate 150/331 * 32 * 9/30 px (4.35, int()
  makes it 4), rotate 30 * 9/30, enhance 0.9 * 9/30, posterize
  8 - round(9 / 7.5), solarize 255 * (1 - 9/30)."""
  expected = {"Identity": 0.0, "ShearX": 0.09, "ShearY": 0.09, "TranslateX": 4.3504531722,
              "TranslateY": 4.3504531722, "Rotate": 9.0, "Brightness": 0.27, "Color": 0.27,
              "Contrast": 0.27, "Sharpness": 0.27, "Posterize": 7.0, "Solarize": 178.5,
              "AutoContrast": 0.0, "Equalize": 0.0}
  got = _positive(policies.randaugment_choices(9, 32, 32))
  assert got.keys() == expected.keys()
  for name, value in expected.items():
    assert got[name] == pytest.approx(value, rel=1e-6), name
  coefficients = policies.randaugment_choices(9, 32, 32).coefficients
  assert coefficients[2 * ops.NAMES.index("TranslateX"), 2] == ops.HALF - 4 * ops.ONE


def test_randaugment_magnitude_bins():
  """Every bin's posterize bits (8 - round(bin / 7.5)) and the maxima."""
  bits = [8] * 4 + [7] * 8 + [6] * 7 + [5] * 8 + [4] * 4
  for magnitude in range(31):
    got = _positive(policies.randaugment_choices(magnitude, 32, 32))
    assert got["Posterize"] == bits[magnitude]
    assert got["Solarize"] == 255.0 - 8.5 * magnitude
    assert got["Rotate"] == float(magnitude)
  top = _positive(policies.randaugment_choices(30, 28, 28))
  assert top["TranslateX"] == pytest.approx(150 / 331 * 28, rel=1e-6)  # 12.69: 12 px on MNIST
  assert top["ShearX"] == pytest.approx(0.3, rel=1e-6)


def test_trivialaugment_wide_bins():
  """TrivialAugmentWide's wide ranges, bins 1, 15, 30. torch.linspace(0, 32,
  31)[15] is 15.999999 (a float32 fused multiply-add), so torchvision shifts
  by int() = 15 px, not 16."""
  choices = policies.trivialaugment_wide_choices(32, 32)
  rows = range(0, len(choices.op) - 1, 2)  # row 2 * (31 * op + bin), positive sign
  magnitude = {(ops.NAMES[choices.op[r]], r // 2 % 31): float(choices.magnitude[r]) for r in rows}
  expected = {("ShearX", 1): 0.033, ("ShearX", 15): 0.495, ("ShearX", 30): 0.99,
              ("TranslateX", 1): 32 / 30, ("TranslateX", 15): 15.999999, ("TranslateX", 30): 32.0,
              ("TranslateY", 30): 32.0, ("Rotate", 1): 4.5, ("Rotate", 30): 135.0,
              ("Brightness", 30): 0.99, ("Sharpness", 15): 0.495, ("Solarize", 9): 178.5,
              ("Solarize", 30): 0.0, ("Posterize", 30): 2.0}
  for key, value in expected.items():
    assert magnitude[key] == pytest.approx(value, rel=1e-6), key
  assert int(magnitude[("TranslateX", 15)]) == 15
  bits = [8] * 3 + [7] * 5 + [6] * 5 + [5] * 5 + [4] * 5 + [3] * 5 + [2] * 3  # 8 - round(bin / 5)
  assert [magnitude[("Posterize", b)] for b in range(31)] == bits


def test_autoaugment_cifar10_magnitudes():
  """The 25 sub-policies' (op, bin) through torchvision's 10-bin space on
  32x32: linspace(0, 30 | 0.3 | 0.9 | 150/331*32, 10), posterize
  8 - round(bin / 2.25), solarize linspace(255, 0, 10)."""
  expected = [("Invert", 0.0), ("Contrast", 0.6), ("Rotate", 6.6666667), ("TranslateX", 14.501511),
              ("Sharpness", 0.1), ("Sharpness", 0.3), ("ShearY", 0.26666667),
              ("TranslateY", 14.501511), ("AutoContrast", 0.0), ("Equalize", 0.0),
              ("ShearY", 0.23333333), ("Posterize", 5.0), ("Color", 0.3), ("Brightness", 0.7),
              ("Sharpness", 0.9), ("Brightness", 0.9), ("Equalize", 0.0), ("Equalize", 0.0),
              ("Contrast", 0.7), ("Sharpness", 0.5), ("Color", 0.7), ("TranslateX", 12.890232),
              ("Equalize", 0.0), ("AutoContrast", 0.0), ("TranslateY", 4.833837),
              ("Sharpness", 0.6), ("Brightness", 0.6), ("Color", 0.8), ("Solarize", 198.33333),
              ("Invert", 0.0), ("Equalize", 0.0), ("AutoContrast", 0.0), ("Equalize", 0.0),
              ("Equalize", 0.0), ("Color", 0.9), ("Equalize", 0.0), ("AutoContrast", 0.0),
              ("Solarize", 28.333334), ("Brightness", 0.3), ("Color", 0.0), ("Solarize", 113.33333),
              ("AutoContrast", 0.0), ("TranslateY", 14.501511), ("TranslateY", 14.501511),
              ("AutoContrast", 0.0), ("Solarize", 170.0), ("Equalize", 0.0), ("Invert", 0.0),
              ("TranslateY", 14.501511), ("AutoContrast", 0.0)]
  choices = policies.autoaugment_cifar10_choices(32, 32)
  got = [(ops.NAMES[o], float(m)) for o, m in zip(choices.op[:-1:2], choices.magnitude[:-1:2])]
  assert [n for n, _ in got] == [n for n, _ in expected]
  for (name, value), (_, m) in zip(expected, got):
    assert m == pytest.approx(value, rel=1e-6, abs=1e-7), name


@pytest.mark.parametrize("table", ["randaugment", "trivialaugment_wide", "autoaugment_cifar10"])
def test_signed_ops_are_negated_on_odd_rows(table):
  """Row 2k+1 is row 2k with the sign flipped for the signed ops (shear,
  translate, rotate, the enhance ops) and the same for the others."""
  choices = {"randaugment": policies.randaugment_choices(9, 32, 32),
             "trivialaugment_wide": policies.trivialaugment_wide_choices(32, 32),
             "autoaugment_cifar10": policies.autoaugment_cifar10_choices(32, 32)}[table]
  signed = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
            "Contrast", "Sharpness"}
  for op, plus, minus in zip(choices.op[:-1:2], choices.magnitude[:-1:2], choices.magnitude[1::2]):
    assert minus == (-plus if ops.NAMES[op] in signed else plus)
  assert ops.NAMES[choices.op[choices.identity_row]] == "Identity"


# --- the policies -----------------------------------------------------------------

NAMES = ("randaugment", "trivialaugment_wide", "autoaugment_cifar10")
DRAWS = 20000  # keys for the frequency tests; the first ones also drive the images


@functools.cache
def _policy_fn(name: str):
  return jax.jit(jax.vmap(policies.make_policy(name)))


def _keys(seed: int, count: int) -> jax.Array:
  return jax.random.split(jax.random.key(seed), count)


@functools.cache
def _draws(name: str) -> np.ndarray:
  """The rows `draw` picks for each of _keys(1, DRAWS)."""
  return np.asarray(jax.jit(jax.vmap(policies.make_policy(name).draw))(_keys(1, DRAWS)))


@pytest.mark.parametrize("name", NAMES)
def test_policy_equals_pil_applying_its_draws(name, cifar, mnist):
  """policy(image, key) under jit + vmap is uint8 of the input's shape and
  equals PIL applying the rows `draw(key)` picked, in order, with their
  magnitudes. Tolerance: none."""
  for images in (cifar, mnist):
    out = np.asarray(_policy_fn(name)(images, _keys(1, DRAWS)[:len(images)]))
    assert out.dtype == np.uint8 and out.shape == images.shape
    choices = policies.make_policy(name).choices(*images.shape[1:3])
    steps = [[(ops.NAMES[choices.op[r]], float(choices.magnitude[r])) for r in rows]
             for rows in _draws(name)[:len(images)]]
    np.testing.assert_array_equal(out, pil_reference(images, steps))


@pytest.mark.parametrize("name", NAMES)
def test_policy_is_a_pure_function_of_the_key(name, cifar):
  """Same key, same image; other keys change at least 75% of the 64 images
  (the rest drew an op that leaves them as they are, or the same op)."""
  keys = _keys(1, DRAWS)
  first = np.asarray(_policy_fn(name)(cifar, keys[:64]))
  np.testing.assert_array_equal(first, np.asarray(_policy_fn(name)(cifar, keys[:64])))
  other = np.asarray(_policy_fn(name)(cifar, keys[64:128]))
  assert np.mean(np.any(first != other, axis=(1, 2, 3))) >= 0.75


def _within(counts: np.ndarray, expected: np.ndarray, n: int) -> bool:
  """Every count within 5 binomial standard deviations of its expectation
  (a false alarm has probability < 1e-5 per count; the seed is fixed)."""
  p = expected / n
  return bool(np.all(np.abs(counts - expected) <= 5 * np.sqrt(n * p * (1 - p)) + 1e-9))


def test_trivialaugment_wide_draws_are_uniform():
  """Op uniform over 14, bin over 31, sign 1/2 (20,000 draws)."""
  rows, n = _draws("trivialaugment_wide")[:, 0], DRAWS
  for counts, k in ((np.bincount(rows // 62, minlength=14), 14),
                    (np.bincount(rows // 2 % 31, minlength=31), 31),
                    (np.bincount(rows % 2, minlength=2), 2)):
    assert len(counts) == k and _within(counts, np.full(k, n / k), n)


def test_randaugment_draws_are_uniform_with_replacement():
  """Each of num_ops=2 ops uniform over 14 and independent (the same op
  twice 1/14 of the time), sign 1/2 (20,000 draws)."""
  rows, n = _draws("randaugment"), DRAWS
  assert rows.shape == (n, 2)
  for position in range(2):
    assert _within(np.bincount(rows[:, position] // 2, minlength=14), np.full(14, n / 14), n)
  assert _within(np.bincount(rows.ravel() % 2), np.full(2, n), 2 * n)
  assert _within(np.array([np.sum(rows[:, 0] // 2 == rows[:, 1] // 2)]), np.array([n / 14]), n)


def test_autoaugment_sub_policies_fire_with_their_probabilities():
  """Slot j of sub-policy i appears with probability p_ij / 25 (20,000
  draws); Invert at probability 0.0 never does."""
  rows, n = _draws("autoaugment_cifar10"), DRAWS
  identity = policies.autoaugment_cifar10_choices(32, 32).identity_row
  for slot in range(2):
    fired = rows[:, slot][rows[:, slot] != identity]
    assert np.all(fired // 2 % 2 == slot)
    counts = np.bincount(fired // 4, minlength=25)
    expected = n * policies.AUTOAUGMENT_CIFAR10_PROBABILITIES[:, slot] / 25
    assert _within(counts, expected, n)
  assert counts[14] == 0  # ("Invert", 0.0) in sub-policy 14


@pytest.mark.parametrize("name", [*NAMES, "none"])
def test_policies_keep_dtype_and_shape_under_jit_and_vmap(name, cifar, mnist):
  for images in (cifar, mnist):  # the shapes compiled above
    out = _policy_fn(name)(images, _keys(6, len(images)))
    assert out.dtype == jnp.uint8 and out.shape == images.shape


def test_make_policy_rejects_unknown_names_and_bins():
  with pytest.raises(UserError, match="valid auto_augments: autoaugment_cifar10, none"):
    policies.make_policy("randaugmnet")
  with pytest.raises(UserError, match="0..30"):
    policies.make_policy("randaugment", magnitude=31)
  assert set(policies.POLICIES) == {"none", "randaugment", "trivialaugment_wide",
                                    "autoaugment_cifar10"}
