"""torchvision's auto-augment ops in pure JAX, with PIL's integer results.

Each op maps ONE uint8 image [H, W, C] (C = 3, or 1 for a mode "L" image) and a
float32 magnitude (a number or a traced scalar) to a uint8 image of the same
shape: what torchvision's `_apply_op` (transforms/autoaugment.py) does to a PIL
image with nearest-neighbour interpolation and fill 0. Not an approximation:
PIL works in 8 bits with its own rounding, and those conventions are kept, so
the pixels are PIL's (tests/test_augment_ops.py compares them on CIFAR-10 and
MNIST). They are
  * geometry: Image.transform(AFFINE, NEAREST) samples each output pixel's
    centre through the inverse matrix in 16.16 fixed point and floors
    (Geometry.c, affine_fixed);
  * Image.blend (the ImageEnhance ops): float32 `a + alpha * (b - a)`, each
    operation rounded, then truncated and clipped to 0..255 (Blend.c);
  * grayscale: (19595 R + 38470 G + 7471 B + 2^15) >> 16 (Convert.c, rgb2l);
  * ImageOps' lookup tables, built as ImageOps builds them.

Every op is one of three building blocks: a warp (`warp`), a per-channel
lookup table (`apply_lut` of a `*_lut`), or a blend with a "degenerate" image
(`blend` with a `DEGENERATES` image). policies.py applies any op as one warp,
one table and one blend, which under `jax.vmap` (where a per-image choice of
op computes every candidate) costs a fraction of running all fifteen ops.

dm-pix (`dm_pix`) is used where its op is PIL's: `pix.solarize`. Its other
ops are defined differently (each op's docstring says how). Its
`affine_transform(order=0)` rounds float coordinates half away from zero
where PIL floors 16.16 fixed point; fed PIL's coefficients as exact dyadic
floats with a -1/2 + 2^-17 offset it gives PIL's pixels (checked on CIFAR),
but only while coordinates fit float32's mantissa (images up to 64 px) and
matmuls run at full float32 precision (not TF32/bf16), and it is 11x slower
than `warp` on 2 CPU cores (2.5 vs 0.22 ms per 128 CIFAR images).
"""
import functools
import math

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

# torchvision's op names, in the order of its RandAugment space, then Invert.
NAMES = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
         "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
         "Invert")

ONE = 65536  # 1.0 in PIL's 16.16 fixed point
HALF = 32768
# (a, b, c, d, e, f) with the half-pixel offsets folded in (see `warp`): the identity.
IDENTITY_COEFFICIENTS = (ONE, 0, HALF, 0, ONE, HALF)
_LEVELS = np.arange(256, dtype=np.int32)


# --- building blocks ---------------------------------------------------------

def warp(image: jax.Array, coefficients: jax.Array) -> jax.Array:
  """PIL's Image.transform(AFFINE, NEAREST, fillcolor=0) from its 16.16
  fixed-point coefficients (a, b, c, d, e, f): output pixel (x, y) copies input
  pixel ((c + a x + b y) >> 16, (f + d x + e y) >> 16), or is 0 outside.

  c and f already hold the sampling of pixel centres, c = FIX(c' + a'/2 + b'/2)
  for the float matrix (a', ..., f'), as Geometry.c's affine_fixed computes
  them; `pil_coefficients` and the `*_coefficients` below produce them. Integer
  arithmetic, hence the same pixels on every backend. Not pix.affine_transform
  (see the module docstring)."""
  height, width = image.shape[:2]
  a, b, c, d, e, f = (coefficients[i] for i in range(6))
  y = jnp.arange(height, dtype=jnp.int32)[:, None]
  x = jnp.arange(width, dtype=jnp.int32)[None, :]
  source_x = (c + a * x + b * y) >> 16  # arithmetic shift: floor, as PIL's
  source_y = (f + d * x + e * y) >> 16
  inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
  pixels = image[jnp.clip(source_y, 0, height - 1), jnp.clip(source_x, 0, width - 1)]
  return jnp.where(inside[..., None], pixels, 0).astype(image.dtype)


def apply_lut(image: jax.Array, lut: jax.Array) -> jax.Array:
  """Image.point with one 256-entry table per channel ([C, 256], clipped to
  0..255 as PIL's CLIP8 does)."""
  lut = jnp.clip(lut, 0, 255).astype(jnp.uint8)
  return lut[jnp.arange(image.shape[-1]), image]


def blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL's Image.blend(degenerate, image, factor), the ImageEnhance ops' last
  step: float32 v = d + fl(factor * (i - d)), then 0..255 and truncated.

  XLA fuses `a + b * c` into one fused multiply-add (one rounding, which
  changes some pixels), so the product is computed as two exact products
  whose sum rounds once: factor = hi + lo with hi's 15 and lo's 9 significant
  bits, each times a difference of at most 8 bits fits float32's 24."""
  alpha = jnp.asarray(factor, jnp.float32)
  hi = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(alpha, jnp.uint32) & jnp.uint32(0xFFFFFE00), jnp.float32)
  lo = alpha - hi
  base = degenerate.astype(jnp.float32)
  difference = image.astype(jnp.float32) - base
  value = base + (hi * difference + lo * difference)
  return jnp.trunc(jnp.clip(value, 0.0, 255.0)).astype(jnp.uint8)


def _fix(value: jax.Array) -> jax.Array:
  """PIL's FIX: a float in 16.16 fixed point, rounded half up."""
  return jnp.floor(value * ONE + 0.5).astype(jnp.int32)


# --- geometry: the warp's coefficients --------------------------------------

def shear_x_coefficients(magnitude: jax.Array) -> jax.Array:
  """torchvision's ShearX: F.affine(shear=[degrees(atan(m)), 0], center=[0, 0]),
  whose inverse matrix is (1, tan(atan(m)), 0, 0, 1, 0) = (1, m, 0, 0, 1, 0).
  Exact in float32: m * 2^16 and m * 2^15 + 1/2 are exact."""
  m = jnp.asarray(magnitude, jnp.float32)
  return jnp.stack([jnp.int32(ONE), _fix(m), HALF + jnp.floor(m * HALF + 0.5).astype(jnp.int32),
                    jnp.int32(0), jnp.int32(ONE), jnp.int32(HALF)])


def shear_y_coefficients(magnitude: jax.Array) -> jax.Array:
  """torchvision's ShearY: inverse matrix (1, 0, 0, m, 1, 0), as ShearX."""
  m = jnp.asarray(magnitude, jnp.float32)
  return jnp.stack([jnp.int32(ONE), jnp.int32(0), jnp.int32(HALF), _fix(m), jnp.int32(ONE),
                    HALF + jnp.floor(m * HALF + 0.5).astype(jnp.int32)])


def translate_coefficients(dx: jax.Array, dy: jax.Array) -> jax.Array:
  """A shift by (int(dx), int(dy)) pixels: torchvision truncates the magnitude
  (`translate=[int(magnitude), 0]`); the inverse matrix is (1, 0, -dx, 0, 1, -dy)."""
  dx = jnp.trunc(jnp.asarray(dx, jnp.float32)).astype(jnp.int32)
  dy = jnp.trunc(jnp.asarray(dy, jnp.float32)).astype(jnp.int32)
  return jnp.stack([jnp.int32(ONE), jnp.int32(0), HALF - ONE * dx, jnp.int32(0), jnp.int32(ONE),
                    HALF - ONE * dy])


def rotate_coefficients(degrees: jax.Array, height: int, width: int) -> jax.Array:
  """PIL's Image.rotate(degrees) about the image centre (w/2, h/2), counter-
  clockwise. float32 cos/sin are not PIL's doubles: about 1 in 10 angles gets
  c or f one unit (2^-16 px) off, which moves a pixel only where a sampling
  point lies within that of a pixel edge (4e-6 of the pixels over random
  angles, 0 at the policies' angles); `pil_coefficients` computes them
  exactly on the host for the policies."""
  theta = -jnp.radians(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = width / 2, height / 2
  # c = cx - cos cx - sin cy + cos/2 + sin/2; f = cy + sin cx - cos cy - sin/2 + cos/2
  c = jnp.floor((cx * ONE + 0.5) + (cos * (0.5 - cx) + sin * (0.5 - cy)) * ONE)
  f = jnp.floor((cy * ONE + 0.5) + (sin * (cx - 0.5) + cos * (0.5 - cy)) * ONE)
  return jnp.stack([_fix(cos), _fix(sin), c.astype(jnp.int32), _fix(-sin), _fix(cos),
                    f.astype(jnp.int32)])


def _pil_fixed_point(matrix: list[float]) -> tuple[int, ...]:
  a, b, c, d, e, f = matrix
  fix = lambda v: math.floor(v * 65536.0 + 0.5)  # noqa: E731
  return fix(a), fix(b), fix(c + a * 0.5 + b * 0.5), fix(d), fix(e), fix(f + d * 0.5 + e * 0.5)


def _torchvision_inverse_affine(center: tuple[float, float], translate: tuple[int, int],
                                shear: tuple[float, float]) -> list[float]:
  """torchvision's _get_inverse_affine_matrix with angle 0 and scale 1 (all
  `_apply_op` uses), operation for operation, in double precision."""
  sx, sy = math.radians(shear[0]), math.radians(shear[1])
  a = math.cos(0.0 - sy) / math.cos(sy)
  b = -math.cos(0.0 - sy) * math.tan(sx) / math.cos(sy) - math.sin(0.0)
  c = math.sin(0.0 - sy) / math.cos(sy)
  d = -math.sin(0.0 - sy) * math.tan(sx) / math.cos(sy) + math.cos(0.0)
  matrix = [d, -b, 0.0, -c, a, 0.0]
  (cx, cy), (tx, ty) = center, translate
  matrix[2] += matrix[0] * (-cx - tx) + matrix[1] * (-cy - ty)
  matrix[5] += matrix[3] * (-cx - tx) + matrix[4] * (-cy - ty)
  matrix[2] += cx
  matrix[5] += cy
  return matrix


def _pil_rotate_matrix(degrees: float, height: int, width: int) -> list[float]:
  """PIL's Image.rotate matrix (its 0/90/180/270 fast paths give the same
  pixels for square images, and for 0 and 180 for any)."""
  angle = -math.radians(degrees % 360.0)
  cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
  matrix = [cos, sin, 0.0, -sin, cos, 0.0]
  cx, cy = width / 2, height / 2
  matrix[2] = matrix[0] * -cx + matrix[1] * -cy + matrix[2] + cx
  matrix[5] = matrix[3] * -cx + matrix[4] * -cy + matrix[5] + cy
  return matrix


def pil_coefficients(name: str, magnitude: float, height: int, width: int) -> tuple[int, ...]:
  """The exact 16.16 coefficients of a geometric op (identity for the others),
  on the host in double precision as torchvision and PIL compute them: what
  the policies use for their fixed magnitudes."""
  if name == "ShearX":
    matrix = _torchvision_inverse_affine((0, 0), (0, 0), (math.degrees(math.atan(magnitude)), 0.0))
  elif name == "ShearY":
    matrix = _torchvision_inverse_affine((0, 0), (0, 0), (0.0, math.degrees(math.atan(magnitude))))
  elif name in ("TranslateX", "TranslateY"):
    shift = (int(magnitude), 0) if name == "TranslateX" else (0, int(magnitude))
    matrix = _torchvision_inverse_affine((width * 0.5, height * 0.5), shift, (0.0, 0.0))
  elif name == "Rotate":
    matrix = _pil_rotate_matrix(magnitude, height, width)
  else:
    return IDENTITY_COEFFICIENTS
  return _pil_fixed_point(matrix)


# --- lookup tables: (image, magnitude) -> int32 [C, 256] --------------------

def _per_channel(image: jax.Array, table: jax.Array) -> jax.Array:
  return jnp.broadcast_to(table, (image.shape[-1], 256))


def identity_lut(image: jax.Array, magnitude: jax.Array = 0.0) -> jax.Array:
  """The table of the ops that use none."""
  return _per_channel(image, jnp.asarray(_LEVELS))


def posterize_lut(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """ImageOps.posterize(int(m)): keep the top `bits` bits."""
  bits = jnp.trunc(jnp.asarray(magnitude, jnp.float32)).astype(jnp.int32)
  mask = ~((jnp.int32(1) << (8 - bits)) - 1)
  return _per_channel(image, jnp.asarray(_LEVELS) & mask)


def solarize_lut(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """ImageOps.solarize(threshold=m): levels >= m become 255 - level.

  pix.solarize is PIL's rule for images in [0, 1] (1 - x at or above the
  threshold); on levels shifted by -127 its 1 - x is 255 - level exactly, and
  so is the threshold m - 127 for m >= 64 or m with at most 17 fractional bits
  (every threshold the policies use)."""
  threshold = jnp.asarray(magnitude, jnp.float32) - 127.0
  shifted = jnp.asarray(_LEVELS, jnp.float32) - 127.0
  return _per_channel(image, (pix.solarize(shifted, threshold) + 127.0).astype(jnp.int32))


@functools.cache
def _autocontrast_truncated_low() -> tuple[np.ndarray, np.ndarray]:
  """Where PIL's autocontrast table is one below the exact (level - lo) * 255
  // (hi - lo): its double-precision int(level * scale - lo * scale) falls
  just below an exact integer, e.g. (lo, hi) = (0, 25) maps 25 to 254. That is
  12,094 of the 2.8M (lo, hi, level) entries, at most 17 per (lo, hi) pair;
  float32 cannot reproduce double rounding, so they are listed: the levels,
  and for each pair lo * 256 + hi, (first index into them) * 32 + count."""
  index, levels, found, count = np.zeros(256 * 256, np.int32), np.arange(256), [], 0
  for lo in range(255):
    hi = np.arange(lo + 1, 256)[:, None]
    scale = 255.0 / (hi - lo)
    offset = -lo * scale
    pil = np.trunc(levels * scale + offset)  # numpy: no fused multiply-add, as PIL
    exact = (levels - lo) * 255 // (hi - lo)
    low = (pil < exact) & (levels >= lo) & (levels <= hi)
    for row in np.nonzero(low.any(axis=1))[0]:
      found.append(levels[low[row]])
      index[lo * 256 + hi[row, 0]] = count * 32 + len(found[-1])
      count += len(found[-1])
  return index, np.concatenate([*found, np.full(32, -1)]).astype(np.int32)


def autocontrast_lut(image: jax.Array, magnitude: jax.Array = 0.0) -> jax.Array:
  """ImageOps.autocontrast(cutoff=0): per channel, stretch [lo, hi] to [0, 255]
  with PIL's truncation (identity for a flat channel). Not in dm-pix."""
  lo = jnp.min(image, axis=(0, 1)).astype(jnp.int32)[:, None]
  hi = jnp.max(image, axis=(0, 1)).astype(jnp.int32)[:, None]
  levels = jnp.asarray(_LEVELS)[None, :]
  exact = jnp.maximum(levels - lo, 0) * 255 // jnp.maximum(hi - lo, 1)
  index, low_levels = (jnp.asarray(t) for t in _autocontrast_truncated_low())
  entry = index[lo * 256 + hi]  # [C, 1]
  candidates = jnp.arange(32)
  low = jnp.where(candidates < entry % 32, low_levels[entry // 32 + candidates], 256)  # [C, 32]
  channels = jnp.arange(image.shape[-1])[:, None]
  truncated = jnp.zeros_like(exact).at[channels, low].set(1, mode="drop")
  return jnp.where(hi > lo, exact - truncated, levels)


def equalize_lut(image: jax.Array, magnitude: jax.Array = 0.0) -> jax.Array:
  """ImageOps.equalize: per channel, step = (pixels - count of the highest
  level) // 255 and lut[i] = (step // 2 + pixels below i) // step; identity
  when step is 0. Not in dm-pix."""
  pixels = image.reshape(-1, image.shape[-1]).astype(jnp.int32)  # [H * W, C]
  channels = jnp.arange(image.shape[-1])
  histogram = jnp.zeros((len(channels), 256), jnp.int32).at[channels, pixels].add(1)
  below = jnp.cumsum(histogram, axis=1) - histogram
  highest = histogram[channels, jnp.max(pixels, axis=0)][:, None]
  step = (len(pixels) - highest) // 255
  levels = jnp.asarray(_LEVELS)[None, :]
  return jnp.where(step > 0, (step // 2 + below) // jnp.maximum(step, 1), levels)


def invert_lut(image: jax.Array, magnitude: jax.Array = 0.0) -> jax.Array:
  """ImageOps.invert. Not in dm-pix."""
  return _per_channel(image, 255 - jnp.asarray(_LEVELS))


# --- degenerate images for blend: image -> uint8 image ----------------------

def black(image: jax.Array) -> jax.Array:
  """ImageEnhance.Brightness's degenerate."""
  return jnp.zeros_like(image)


def _luma(image: jax.Array) -> jax.Array:
  """PIL's convert("L"): 16-bit fixed-point ITU-R 601 luma (a mode "L" image
  is its own)."""
  if image.shape[-1] == 1:
    return image[..., 0].astype(jnp.int32)
  r, g, b = (image[..., i].astype(jnp.int32) for i in range(3))
  return (19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16


def grayscale(image: jax.Array) -> jax.Array:
  """convert("L").convert(mode): the luma in every channel."""
  return jnp.broadcast_to(_luma(image)[..., None], image.shape).astype(jnp.uint8)


def mean_gray(image: jax.Array) -> jax.Array:
  """ImageEnhance.Contrast's degenerate: int(mean luma + 0.5) everywhere,
  computed exactly as (2 sum + n) // 2n."""
  total, count = jnp.sum(_luma(image)), image.shape[0] * image.shape[1]
  return jnp.full(image.shape, (2 * total + count) // (2 * count), jnp.uint8)


def smooth(image: jax.Array) -> jax.Array:
  """ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, / 13) with the
  border pixels kept, as Filter.c does. PIL rounds n / 13 + 1/2 in float32;
  n / 13 is never a half, so round(n / 13) = (2n + 13) // 26 is exact."""
  x = image.astype(jnp.int32)
  height, width = image.shape[:2]
  window = sum(x[dy:height - 2 + dy, dx:width - 2 + dx] for dy in range(3) for dx in range(3))
  inner = (2 * (window + 4 * x[1:-1, 1:-1]) + 13) // 26
  return image.at[1:-1, 1:-1].set(inner.astype(jnp.uint8))


# op name -> the degenerate image it blends with.
DEGENERATES = {"Brightness": black, "Color": grayscale, "Contrast": mean_gray,
               "Sharpness": smooth}
# op name -> its lookup table.
LUTS = {"Posterize": posterize_lut, "Solarize": solarize_lut, "AutoContrast": autocontrast_lut,
        "Equalize": equalize_lut, "Invert": invert_lut}


# --- the ops: (uint8 image [H, W, C], magnitude) -> uint8 image -------------

def identity(image: jax.Array, magnitude: jax.Array = 0.0) -> jax.Array:
  """The image; ignores the magnitude."""
  return image


def shear_x(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """Horizontal shear about the top-left corner (torchvision's center=[0, 0]).
  `warp`, not pix.affine_transform (module docstring)."""
  return warp(image, shear_x_coefficients(magnitude))


def shear_y(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """Vertical shear about the top-left corner. `warp`, as shear_x."""
  return warp(image, shear_y_coefficients(magnitude))


def translate_x(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """Shift right by int(magnitude) pixels (truncated toward zero). `warp`,
  as shear_x."""
  return warp(image, translate_coefficients(magnitude, 0))


def translate_y(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """Shift down by int(magnitude) pixels. `warp`, as shear_x."""
  return warp(image, translate_coefficients(0, magnitude))


def rotate(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """Rotate counter-clockwise by `magnitude` degrees about the centre. Not
  pix.rotate: it turns about ((h - 1)/2, (w - 1)/2) and rounds, PIL about
  (w/2, h/2) and floors."""
  return warp(image, rotate_coefficients(magnitude, *image.shape[:2]))


def brightness(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """ImageEnhance.Brightness(1 + m): a blend with black. Not
  pix.adjust_brightness, which adds a delta (tf.image's definition)."""
  return blend(black(image), image, 1.0 + magnitude)


def color(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """ImageEnhance.Color(1 + m): a blend with the luma image (no-op for mode
  "L"). Not pix.adjust_saturation, which scales HSV saturation."""
  return blend(grayscale(image), image, 1.0 + magnitude)


def contrast(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """ImageEnhance.Contrast(1 + m): a blend with the rounded mean luma. Not
  pix.adjust_contrast, which uses each channel's own float mean."""
  return blend(mean_gray(image), image, 1.0 + magnitude)


def sharpness(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """ImageEnhance.Sharpness(1 + m): a blend with the SMOOTH-filtered image.
  Not in dm-pix (pix.gaussian_blur is another kernel)."""
  return blend(smooth(image), image, 1.0 + magnitude)


def posterize(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """ImageOps.posterize(int(m)). Not in dm-pix."""
  return apply_lut(image, posterize_lut(image, magnitude))


def solarize(image: jax.Array, magnitude: jax.Array) -> jax.Array:
  """ImageOps.solarize(m), through pix.solarize (see solarize_lut)."""
  return apply_lut(image, solarize_lut(image, magnitude))


def autocontrast(image: jax.Array, magnitude: jax.Array = 0.0) -> jax.Array:
  """ImageOps.autocontrast(); ignores the magnitude. Not in dm-pix."""
  return apply_lut(image, autocontrast_lut(image))


def equalize(image: jax.Array, magnitude: jax.Array = 0.0) -> jax.Array:
  """ImageOps.equalize(); ignores the magnitude. Not in dm-pix."""
  return apply_lut(image, equalize_lut(image))


def invert(image: jax.Array, magnitude: jax.Array = 0.0) -> jax.Array:
  """ImageOps.invert(); ignores the magnitude. Not in dm-pix (1 - x on [0, 1]
  floats is a different convention, and a table is as cheap)."""
  return apply_lut(image, invert_lut(image))


OPS = dict(zip(NAMES, (identity, shear_x, shear_y, translate_x, translate_y, rotate, brightness,
                       color, contrast, sharpness, posterize, solarize, autocontrast, equalize,
                       invert)))
