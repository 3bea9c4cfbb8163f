"""`cnn.inference.images`: finding image files and converting them to look
like the dataset's own images (real MNIST and CIFAR-10 test images)."""
import numpy as np
import pytest
from PIL import Image

from cnn import datasets
from cnn.inference import images

# Its module-scoped fixtures are made once: the whole file runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_images")


@pytest.fixture(scope="module")
def mnist_test(mnist):
  return mnist.load_split("test")


@pytest.fixture(scope="module")
def cifar_test(cifar10):
  return cifar10.load_split("test")


def test_the_datasets_own_images_come_back_unchanged(mnist_test, cifar_test, tmp_path):
  digits, photos = mnist_test[0][:50], cifar_test[0][:50]
  for i, (digit, photo) in enumerate(zip(digits, photos)):
    Image.fromarray(digit[..., 0], "L").save(tmp_path / f"d{i}.png")
    Image.fromarray(photo, "RGB").save(tmp_path / f"p{i}.png")
    got = images.convert(images.read(tmp_path / f"d{i}.png"), "mnist", (28, 28, 1))
    np.testing.assert_array_equal(got, digit)
    got = images.convert(images.read(tmp_path / f"p{i}.png"), "cifar10", (32, 32, 3))
    np.testing.assert_array_equal(got, photo)
  # 16-bit grayscale, an RGB file of a digit, RGBA with full opacity: the same pixels
  digit = digits[0][..., 0]
  Image.fromarray(digit.astype(np.uint16) * 257).save(tmp_path / "d16.png")
  assert Image.open(tmp_path / "d16.png").mode.startswith("I")
  Image.fromarray(np.repeat(digit[..., None], 3, -1), "RGB").save(tmp_path / "drgb.png")
  rgba = np.concatenate([photos[0], np.full((32, 32, 1), 255, np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "prgba.png")
  for name in ("d16.png", "drgb.png"):
    got = images.convert(images.read(tmp_path / name), "mnist", (28, 28, 1))
    np.testing.assert_array_equal(got[..., 0], digit)
  got = images.convert(images.read(tmp_path / "prgba.png"), "cifar10", (32, 32, 3))
  np.testing.assert_array_equal(got, photos[0])


def _as_paper_scan(digit: np.ndarray, rng) -> Image.Image:
  """An MNIST digit as a user's image: dark ink on grey paper, 5x larger,
  off centre, in colour, JPEG-compressed."""
  ink = Image.fromarray(255 - digit[..., 0], "L").resize((140, 140), Image.Resampling.BICUBIC)
  page = np.full((220, 260), 225, np.uint8)
  top, left = rng.integers(0, 80), rng.integers(0, 120)
  page[top:top + 140, left:left + 140] = np.minimum(np.asarray(ink), 225)
  return Image.fromarray(np.repeat(page[..., None], 3, -1), "RGB")


def test_a_scanned_digit_is_converted_like_mnist(mnist_test, tmp_path):
  """Inverted, background removed, cropped, fit into 20x20, centred by mass:
  MNIST's own procedure, so the result is the original digit up to a pixel or
  two of placement (MNIST's centring was done before its last rounding)."""
  rng = np.random.default_rng(0)
  errors = []
  for i, digit in enumerate(mnist_test[0][:40]):
    _as_paper_scan(digit, rng).save(tmp_path / f"{i}.jpg", quality=90)
    got = images.convert(images.read(tmp_path / f"{i}.jpg"), "mnist", (28, 28, 1))[..., 0]
    assert got.dtype == np.uint8 and got.max() > 200
    assert got[0].max() == 0 and got[:, 0].max() == 0  # black margins, like MNIST's
    rows, cols = np.indices(got.shape) + 0.5
    mass = got.astype(float) / got.sum()
    assert abs((rows * mass).sum() - 14) <= 0.5 and abs((cols * mass).sum() - 14) <= 0.5
    errors.append(min(np.mean(np.abs(np.roll(got, (dy, dx), (0, 1)) - digit[..., 0].astype(float)))
                      for dy in range(-2, 3) for dx in range(-2, 3)) / 255)
  # measured: median 0.022, largest 0.044 of the pixel range
  assert np.median(errors) < 0.035 and max(errors) < 0.07, errors


def test_a_larger_photo_is_centre_cropped_and_resized(cifar_test, tmp_path):
  photo = cifar_test[0][3]
  big = Image.fromarray(photo).resize((96, 96), Image.Resampling.BICUBIC)
  wide = Image.new("RGB", (160, 96), (0, 0, 255))
  wide.paste(big, (32, 0))  # a blue band left and right: cropped away
  wide.save(tmp_path / "wide.jpg", quality=95)
  got = images.convert(images.read(tmp_path / "wide.jpg"), "cifar10", (32, 32, 3))
  assert np.mean(np.abs(got.astype(float) - photo)) < 8
  gray = Image.fromarray(photo).convert("L")
  gray.save(tmp_path / "gray.png")
  got = images.convert(images.read(tmp_path / "gray.png"), "cifar10", (32, 32, 3))
  np.testing.assert_array_equal(got[..., 0], np.asarray(gray))
  np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_find_files_folders_and_globs(tmp_path):
  (tmp_path / "a" / "deep").mkdir(parents=True)
  for name in ("a/1.png", "a/deep/2.JPG", "a/notes.txt", "b.png", "c.jpeg"):
    (tmp_path / name).write_bytes(b"x")
  found = images.find([str(tmp_path / "a"), str(tmp_path / "*.png"), str(tmp_path / "c.jpeg"),
                       str(tmp_path / "missing.png"), str(tmp_path / "*.gif")])
  assert found == [
      (str(tmp_path / "a/1.png"), None), (str(tmp_path / "a/deep/2.JPG"), None),
      (str(tmp_path / "b.png"), None), (str(tmp_path / "c.jpeg"), None),
      (str(tmp_path / "missing.png"), "no such file or folder"),
      (str(tmp_path / "*.gif"), "no file matches this pattern")]


def test_files_that_are_not_usable_images_say_why(tmp_path):
  png = tmp_path / "good.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).save(png)
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "text.jpg").write_text("not an image\n")
  (tmp_path / "cut.png").write_bytes(png.read_bytes()[:2000])
  for name, why in (("empty.png", "empty file"), ("text.jpg", "not an image file Pillow can "
                    "read"), ("cut.png", "damaged or truncated image")):
    with pytest.raises(images.ImageError, match=why):
      images.read(tmp_path / name)
