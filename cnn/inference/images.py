"""Your own image files -> the uint8 arrays a model of one dataset takes.

`find(patterns)` turns files, folders and globs into a list of paths;
`read(path)` opens one file (PNG, JPEG, BMP, GIF, WebP, TIFF, ...: whatever
Pillow reads) and raises `ImageError` with one line when it cannot;
`convert(image, dataset)` makes it look like that dataset's images, with the
conversion `CONVERSIONS[conversion_of(dataset)]` (README: "Predict on your
own images" states each one):

- "digit" (MNIST): grayscale, white strokes on black (inverted when the
  background is light). An image of another size is prepared the way MNIST's
  digits were: background removed, cropped to the strokes, scaled to fit a
  20x20 box (aspect kept, antialiased), centred by centre of mass in 28x28.
- "item" (Fashion-MNIST): grayscale, light object on black (inverted when the
  background is light). Another size: background removed, cropped to the
  object, scaled to fit 28x28 (aspect kept), centred.
- "photo" (CIFAR-10/100): RGB (grayscale repeated, transparency on white).
  Another size: the largest centred square, resized (antialiased bicubic).
- "grayscale" (any other one-channel dataset): luminance; another size: the
  largest centred square, resized.

An image that already has the dataset's height and width is not resized,
cropped or rescaled (only its channels and, for "digit"/"item", its polarity
are converted), so the dataset's own images written to PNG come back with the
same pixels.
"""
import glob
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnn.errors import UserError

# Files a folder contributes (an explicit file or glob match is tried whatever its name).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".ppm", ".pgm", ".pbm", ".pnm"})
_GLOB_CHARACTERS = frozenset("*?[")


class ImageError(UserError):
  """One input that cannot be used; the others still are."""


def find(patterns: list[str]) -> list[tuple[str, str | None]]:
  """(path, problem) for every input: a file as given, a folder's image files
  (recursively, sorted), a glob's matches (sorted, `**` recursive). A pattern
  that names nothing comes back as one entry with its problem."""
  found = []
  for pattern in patterns:
    if any(c in _GLOB_CHARACTERS for c in pattern) and not os.path.exists(pattern):
      matches = sorted(m for m in glob.glob(pattern, recursive=True) if not os.path.isdir(m))
      found += [(m, None) for m in matches] or [(pattern, "no file matches this pattern")]
    elif os.path.isdir(pattern):
      files = sorted(str(p) for p in Path(pattern).rglob("*")
                     if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
      found += [(f, None) for f in files] or [
          (pattern, f"folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")]
    elif os.path.exists(pattern):
      found.append((pattern, None))
    else:
      found.append((pattern, "no such file or folder"))
  return found


def read(path: str) -> Image.Image:
  """The decoded image, upright (EXIF orientation applied), first frame of an
  animation; `ImageError` (one line) when the file cannot be used."""
  try:
    if os.path.getsize(path) == 0:
      raise ImageError("empty file")
    with Image.open(path) as image:
      image.load()  # decode now: a truncated file fails here, not later
      return ImageOps.exif_transpose(image)
  except UnidentifiedImageError:
    raise ImageError("not an image file Pillow can read") from None
  except PermissionError:
    raise ImageError("cannot read it: permission denied") from None
  except IsADirectoryError:
    raise ImageError("is a folder, not an image file") from None
  except (OSError, SyntaxError, ValueError) as e:  # truncated or damaged data
    raise ImageError(f"damaged or truncated image ({e})") from None


def _eight_bit(image: Image.Image) -> Image.Image:
  """16-bit and float images -> 8-bit by their range; palettes and CMYK expanded."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    a = np.asarray(image, np.float64)
    top = 65535.0 if a.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.round(a * 255.0 / top), 0, 255).astype(np.uint8), "L")
  if image.mode == "F":
    a = np.asarray(image, np.float64)
    top = 1.0 if a.max() <= 1.0 else 255.0
    return Image.fromarray(np.clip(np.round(a * 255.0 / top), 0, 255).astype(np.uint8), "L")
  if image.mode in ("P", "PA", "1"):
    return image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
  if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
    return image.convert("RGB")
  return image


def _on_white(image: Image.Image) -> Image.Image:
  """Transparency composited onto white (a drawing on a transparent canvas
  reads as ink on paper)."""
  if image.mode in ("RGBA", "LA"):
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  return image


def _gray(image: Image.Image) -> np.ndarray:
  """Luminance (ITU-R 601, Pillow's "L"), float64 in [0, 255]."""
  return np.asarray(_on_white(_eight_bit(image)).convert("L"), np.float64)


def _rgb(image: Image.Image) -> np.ndarray:
  return np.asarray(_on_white(_eight_bit(image)).convert("RGB"), np.float64)


def _border(a: np.ndarray) -> np.ndarray:
  return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])


def _light_on_dark(a: np.ndarray) -> np.ndarray:
  """Inverted when the border (the background) is mostly light."""
  return 255.0 - a if np.median(_border(a)) > 127.5 else a


def _without_background(a: np.ndarray) -> np.ndarray:
  """The background level (the border's median) becomes 0 and the brightest
  pixel 255: paper grey and uneven lighting do not read as strokes."""
  background, top = np.median(_border(a)), a.max()
  if top <= background:
    return np.zeros_like(a)
  return np.clip((a - background) * 255.0 / (top - background), 0, 255)


def _crop_to_content(a: np.ndarray, threshold: float = 64.0) -> np.ndarray:
  rows, cols = np.nonzero(a > threshold)
  if rows.size == 0:
    return a
  return a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """float [0, 255] (H, W) or (H, W, 3) -> (height, width) by antialiased bicubic."""
  height, width = size
  image = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
  return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), np.float64)


def _fit(a: np.ndarray, box: int) -> np.ndarray:
  """Scaled so that its longer side is `box` pixels, aspect kept."""
  h, w = a.shape[:2]
  scale = box / max(h, w)
  return _resize(a, (max(1, round(h * scale)), max(1, round(w * scale))))


def _centre_square(a: np.ndarray) -> np.ndarray:
  h, w = a.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  return a[top:top + side, left:left + side]


def _paste(a: np.ndarray, size: tuple[int, int], centre: tuple[float, float]) -> np.ndarray:
  """`a` on a black canvas of `size`, placed so that the point `centre` of `a`
  lands on the canvas's centre (clamped so that all of `a` stays inside)."""
  height, width = size
  h, w = a.shape
  top = int(np.clip(round(height / 2 - centre[0]), 0, height - h))
  left = int(np.clip(round(width / 2 - centre[1]), 0, width - w))
  canvas = np.zeros(size, np.float64)
  canvas[top:top + h, left:left + w] = a
  return canvas


def _centre_of_mass(a: np.ndarray) -> tuple[float, float]:
  total = a.sum()
  if total == 0:
    return a.shape[0] / 2, a.shape[1] / 2
  rows, cols = np.indices(a.shape) + 0.5
  return float((rows * a).sum() / total), float((cols * a).sum() / total)


def digit(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
  """grayscale, white on black (inverted if the background is light); another size: background
  removed, cropped to the strokes, fit into 20x20 (aspect kept), centred by centre of mass in
  28x28, as MNIST was made"""
  a = _light_on_dark(_gray(image))
  if a.shape == size:
    return a
  a = _fit(_crop_to_content(_without_background(a)), round(min(size) * 20 / 28))
  return _paste(a, size, _centre_of_mass(a))


def item(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
  """grayscale, light on black (inverted if the background is light); another size: background
  removed, cropped to the object, fit into 28x28 (aspect kept), centred"""
  a = _light_on_dark(_gray(image))
  if a.shape == size:
    return a
  a = _fit(_crop_to_content(_without_background(a)), min(size))
  return _paste(a, size, (a.shape[0] / 2, a.shape[1] / 2))


def photo(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
  """RGB (grayscale repeated, transparency on white); another size: the largest centred square,
  resized by antialiased bicubic"""
  a = _rgb(image)
  return a if a.shape[:2] == size else _resize(_centre_square(a), size)


def grayscale(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
  """luminance; another size: the largest centred square, resized by antialiased bicubic"""
  a = _gray(image)
  return a if a.shape == size else _resize(_centre_square(a), size)


CONVERSIONS = {"digit": digit, "item": item, "photo": photo, "grayscale": grayscale}
_DATASET_CONVERSION = {"mnist": "digit", "fashion_mnist": "item", "cifar10": "photo",
                       "cifar100": "photo"}


def conversion_of(dataset: str, channels: int) -> str:
  """The conversion's name: the dataset's own, else by its number of channels."""
  return _DATASET_CONVERSION.get(dataset, "photo" if channels == 3 else "grayscale")


def convert(image: Image.Image, dataset: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  """(H, W, C) uint8, as `image_shape` says, converted as the dataset's images look."""
  height, width, channels = image_shape
  a = CONVERSIONS[conversion_of(dataset, channels)](image, (height, width))
  a = np.clip(np.round(a), 0, 255).astype(np.uint8)
  return a[..., None] if a.ndim == 2 else a
