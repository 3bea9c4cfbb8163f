"""cnn/augment/: the classic ops (pad-crop-flip, normalisation, Cutout,
random erasing), mixup and CutMix against their definitions, and the whole
batch augmentation as a pure function of (seed, epoch, step). The PIL-level
ops and the auto-augment policies: test_augment_ops.py."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import augment, datasets
from cnn.augment import basic, mixing
from cnn.errors import UserError
from configs import default

MNIST, CIFAR = datasets.get_spec("mnist"), datasets.get_spec("cifar10")


def test_pad_crop_flip_geometry():
  images = jnp.reshape(jnp.arange(2 * 4 * 4, dtype=jnp.float32) + 1, (2, 4, 4, 1))
  centre = jnp.asarray([[2, 2], [2, 2]])
  same = basic.pad_crop_flip(images, centre, jnp.asarray([False, False]), 2)
  np.testing.assert_array_equal(same, images)
  flipped = basic.pad_crop_flip(images, centre, jnp.asarray([True, False]), 2)
  np.testing.assert_array_equal(flipped[0], images[0, :, ::-1])
  np.testing.assert_array_equal(flipped[1], images[1])
  corner = basic.pad_crop_flip(images, jnp.asarray([[0, 0], [4, 4]]),
                               jnp.asarray([False, False]), 2)
  np.testing.assert_array_equal(corner[0, 2:, 2:], images[0, :2, :2])
  assert not np.any(corner[0, :2]) and not np.any(corner[1, 2:])


def test_random_crops_cover_every_offset_and_flips_half(cifar10):
  images, _ = cifar10.load_split("train[:512]")
  out = np.asarray(basic.random_pad_crop_flip(jnp.asarray(images), jax.random.key(0), 4, True))
  found = set()
  flips = 0
  for src, dst in zip(images, out):  # recover each image's offset and flip by search
    padded = np.pad(src, ((4, 4), (4, 4), (0, 0)))
    hits = [(r, c, f) for f in (False, True) for r in range(9) for c in range(9)
            if np.array_equal(padded[r:r + 32, c:c + 32][:, ::-1 if f else 1], dst)]
    assert hits, "not a crop of the padded image"
    found.add(hits[0][:2])
    flips += hits[0][2]
  assert len(found) == 81  # all (2 * 4 + 1)^2 offsets occur
  assert 0.4 < flips / len(images) < 0.6


def test_mnist_is_normalised_per_channel(mnist):
  images, _ = mnist.load_split("train[:5000]")
  x = np.asarray(augment.normalize(images, MNIST.mean, MNIST.std))
  assert x.dtype == np.float32
  assert abs(x.mean()) < 0.05 and abs(x.std() - 1.0) < 0.05
  # numpy's float32 arithmetic to an ulp, eagerly and inside jit (XLA may
  # divide by multiplying with the reciprocal, fused or not).
  expected = (images.astype(np.float32) / np.float32(255)
              - np.asarray(MNIST.mean, np.float32)) / np.asarray(MNIST.std, np.float32)
  np.testing.assert_allclose(x, expected, rtol=0, atol=2.5e-7)
  jitted = jax.jit(functools.partial(augment.normalize, mean=MNIST.mean, std=MNIST.std))
  np.testing.assert_allclose(np.asarray(jitted(images)), expected, rtol=0, atol=2.5e-7)


def test_cutout_zeroes_one_square_per_image_clipped_at_the_border():
  ones = jnp.ones((256, 32, 32, 3), jnp.float32)
  out = np.asarray(basic.cutout(ones, jax.random.key(3), 8))
  hole = out[..., 0] == 0
  assert np.all((out == 0) == hole[..., None])  # all channels
  holes = hole.sum(axis=(1, 2))
  assert holes.max() == 64 and holes.min() >= 16  # whole 8x8 inside, or a clipped corner
  assert (holes < 64).any()  # some centres near the border
  for image in hole:  # each hole is one rectangle
    rows, cols = np.nonzero(image)
    assert len(rows) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
  np.testing.assert_array_equal(out, basic.cutout(ones, jax.random.key(3), 8))


def test_random_erasing_follows_torchvisions_parameters():
  """RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0): one
  rectangle per erased image, its area and aspect ratio in range (up to the
  rounding of h and w), erased with probability p."""
  n, p = 2000, 0.5
  ones = jnp.ones((n, 32, 32, 3), jnp.float32)
  out = np.asarray(basic.random_erasing(ones, jax.random.key(0), p))
  hole = out[..., 0] == 0
  erased = hole.any(axis=(1, 2))
  assert abs(erased.mean() - p) < 0.04  # binomial sd 0.011
  for image in hole[erased][:300]:
    rows, cols = np.nonzero(image)
    h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert len(rows) == h * w and h < 32 and w < 32
    area = math.sqrt(h * w)
    assert (math.sqrt(0.02) * 32 - 1) ** 2 <= h * w <= (math.sqrt(0.33) * 32 + 1) ** 2, area
    assert (math.sqrt(0.02 * 1024 * 0.3) - 1) / (math.sqrt(0.33 * 1024 / 0.3) + 1) <= h / w
  aspect = np.log([np.ptp(np.nonzero(i)[0]) + 1 for i in hole[erased]]) - np.log(
      [np.ptp(np.nonzero(i)[1]) + 1 for i in hole[erased]])
  assert abs(np.median(aspect)) < 0.15  # log-uniform aspect ratio, symmetric about 1
  # Placement is uniform over the valid positions: holes touch every border.
  assert hole[erased][:, 0].any() and hole[erased][:, -1].any()
  assert hole[erased][:, :, 0].any() and hole[erased][:, :, -1].any()
  assert not hole[~erased].any()
  assert np.asarray(basic.random_erasing(ones, jax.random.key(0), 0.0)).min() == 1.0


def test_erasing_boxes_take_the_first_attempt_that_fits():
  top, left, h, w, found = (
      np.asarray(a) for a in basic.erasing_boxes(jax.random.key(1), 4000, 8, 8))
  assert found.all()  # at 8x8 some of 10 attempts always fit (p(no fit) is tiny)
  assert (h < 8).all() and (w < 8).all() and (top + h <= 8).all() and (left + w <= 8).all()
  assert (top >= 0).all() and (left >= 0).all()


def test_mixup_blends_each_image_and_target_with_its_mirror():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4, 4, 1)), jnp.float32)
  t = mixing.one_hot(jnp.arange(6), 10)
  mixed, targets = mixing.mixup(x, t, jax.random.key(0), 0.4)
  lam = float(jax.random.beta(jax.random.key(0), 0.4, 0.4))
  assert 0.0 < lam < 1.0
  np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], rtol=1e-6)
  np.testing.assert_allclose(targets[0, 0], lam, rtol=1e-6)
  np.testing.assert_allclose(targets[0, 5], 1 - lam, rtol=1e-6)
  np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)


def test_cutmix_pastes_the_partners_box_and_mixes_targets_by_area():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32)
  t = mixing.one_hot(jnp.arange(8), 10)
  areas = []
  for seed in range(40):
    out, targets = (np.asarray(a) for a in mixing.cutmix(x, t, jax.random.key(seed), 1.0))
    from_partner = np.all(out == np.asarray(x)[::-1], axis=-1)
    own = np.all(out == np.asarray(x), axis=-1)
    assert np.all(from_partner | own)
    box = from_partner[0]
    assert np.array_equal(box, from_partner[3])  # one box per batch
    if box.any():
      rows, cols = np.nonzero(box)
      assert box.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # a rectangle
    kept = 1 - box.mean()
    np.testing.assert_allclose(targets[0, 0], kept, rtol=1e-6)
    np.testing.assert_allclose(targets[0, 7], 1 - kept, rtol=1e-5, atol=1e-6)
    areas.append(box.mean())
  # lam ~ Beta(1, 1) = U(0, 1): the box covers (1 - lam) before clipping, so on
  # average a bit under one half.
  assert 0.2 < np.mean(areas) < 0.5


def test_with_mixup_and_cutmix_each_batch_uses_one_of_them():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
  t = mixing.one_hot(jnp.arange(4), 4)
  kinds = []
  mix = jax.jit(mixing.mix, static_argnums=(3, 4))
  for seed in range(60):
    out = np.asarray(mix(x, t, jax.random.key(seed), 0.4, 1.0)[0])
    pasted = np.all((out == np.asarray(x)) | (out == np.asarray(x)[::-1]))
    kinds.append("cutmix" if pasted else "mixup")
  assert 15 < kinds.count("cutmix") < 45


def make_config(overrides=None):
  config = default.get_config()
  config.update_from_flattened_dict(overrides or {})
  return config


@pytest.mark.parametrize("overrides", [
    {}, {"augment.cutout": 16}, {"augment.random_erasing": 0.5},
    {"augment.mixup_alpha": 0.2, "augment.cutmix_alpha": 1.0},
])
def test_the_batch_is_a_pure_function_of_the_key(overrides, cifar10):
  images, labels = cifar10.load_split("train[:64]")
  fn = jax.jit(augment.make_augment(make_config(overrides).augment, CIFAR))
  key = augment.step_key(0, 3, 7)
  a, b = fn(images, labels, key), fn(images, labels, key)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["target"], b["target"])
  other = fn(images, labels, augment.step_key(0, 3, 8))
  assert not np.array_equal(a["image"], other["image"])
  assert a["image"].dtype == jnp.float32 and a["image"].shape == images.shape
  np.testing.assert_array_equal(a["label"], labels)
  np.testing.assert_allclose(np.asarray(a["target"]).sum(axis=1), 1.0, rtol=1e-5)


def test_without_augmentation_the_batch_is_the_normalised_images(cifar10):
  images, labels = cifar10.load_split("train[:16]")
  unaugmented = augment.make_augment(make_config({"augment.geometry": "none"}).augment, CIFAR)
  out = unaugmented(images, labels, jax.random.key(0))
  np.testing.assert_array_equal(out["image"], augment.normalize(images, CIFAR.mean, CIFAR.std))
  np.testing.assert_array_equal(out["target"], jax.nn.one_hot(labels, 10))


def test_stages_draw_from_their_own_keys(cifar10):
  """Switching Cutout on changes nothing but the holes: the crops are the same."""
  images, labels = cifar10.load_split("train[:64]")
  key = augment.step_key(1, 0, 0)
  plain = augment.make_augment(make_config().augment, CIFAR)
  plain = np.asarray(plain(images, labels, key)["image"])
  cut = augment.make_augment(make_config({"augment.cutout": 16}).augment, CIFAR)
  cut = np.asarray(cut(images, labels, key)["image"])
  same = np.all(plain == cut, axis=-1)
  assert np.all(cut[~same] == 0)  # changed pixels are zero: the mean after normalising
  assert 0.05 < 1 - same.mean() < 0.3  # a 16x16 hole is a quarter of the image at most


def test_unknown_names_list_the_valid_ones():
  with pytest.raises(UserError, match="none, pad_crop, pad_crop_flip"):
    augment.make_augment(make_config({"augment.geometry": "crop"}).augment, CIFAR)
  with pytest.raises(UserError, match="randaugment"):
    augment.make_augment(make_config({"augment.policy": "randaug"}).augment, CIFAR)
