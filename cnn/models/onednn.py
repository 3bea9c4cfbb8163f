"""oneDNN's convolutions on the CPU, called through XLA's FFI (native/onednn).

The `cnn-onednn` package (built by `pip install -r requirements.txt` on
x86_64 Linux, where oneDNN's PyPI wheels exist) registers three handlers:
the forward pass, the input gradient and the kernel gradient of a 2-D NHWC
convolution with an HWIO kernel, fp32 or bf16, any strides, padding and
feature groups. They run on the buffers as JAX holds them (no layout copy
outside oneDNN), one call at a time with every core.

`available()` says whether they can be used (installed, loaded, and one CPU
device: under several devices a custom call would run on the gathered batch
on each, so the rule falls back to its built-in algorithms there); the first
time it is false for a reason the user can act on, it says so in one log line.
Under `jax.vmap` each call loops over the mapped axis ("sequential").
"""
import functools
import logging

import jax
import numpy as np

PRODUCTS = ("forward", "input_grad", "kernel_grad")
DTYPES = (np.dtype("float32"), np.dtype(jax.numpy.bfloat16))


@functools.cache
def _loaded() -> str | None:
  """oneDNN's version once its handlers are registered; None (and one log line) if the
  extension is not installed or does not load."""
  try:
    import cnn_onednn  # pylint: disable=import-outside-toplevel
    version = cnn_onednn.load()
  except (ImportError, OSError, AttributeError) as e:
    logging.info("oneDNN convolutions unavailable (%s: %s); CPU convolutions use the built-in "
                 "algorithms (pip install -r requirements.txt builds them on x86_64 Linux)",
                 type(e).__name__, e)
    return None
  logging.info("oneDNN %s convolutions through XLA's FFI", version)
  return version


@functools.cache
def _several_devices(count: int) -> None:
  logging.info("%d devices: CPU convolutions use the built-in algorithms, not oneDNN's (a "
               "custom call would run on the gathered batch on every device)", count)


def available() -> bool:
  """True where the rule may pick "onednn": installed, and a single CPU device
  (with several, one log line says why not)."""
  if _loaded() is None:
    return False
  if jax.device_count() > 1:
    _several_devices(jax.device_count())
    return False
  return True


def supports(dtype) -> bool:
  return np.dtype(dtype) in DTYPES


def _call(product: str, a, b, out_shape, strides, pads, groups):
  if _loaded() is None:  # a plan naming "onednn" where it is not installed
    raise RuntimeError("the oneDNN extension (cnn-onednn) is not installed")
  import cnn_onednn  # pylint: disable=import-outside-toplevel
  return jax.ffi.ffi_call(cnn_onednn.target(product), jax.ShapeDtypeStruct(out_shape, a.dtype),
                          vmap_method="sequential")(
      a, b, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
      pad_top=np.int64(pads[0][0]), pad_left=np.int64(pads[1][0]), groups=np.int64(groups))


def forward(x, w, strides, pads, out_hw, groups):
  n, o = x.shape[0], w.shape[3]
  return _call("forward", x, w.astype(x.dtype), (n, *out_hw, o), strides, pads, groups)


def input_grad(x, w, g, strides, pads, groups):
  return _call("input_grad", g, w.astype(g.dtype), x.shape, strides, pads, groups).astype(x.dtype)


def kernel_grad(x, w, g, strides, pads, groups):
  return _call("kernel_grad", x.astype(g.dtype), g, w.shape, strides, pads,
               groups).astype(w.dtype)
