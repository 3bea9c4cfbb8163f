"""oneDNN's convolutions and BatchNorm on the CPU, called through XLA's FFI
(native/onednn).

The `cnn-onednn` package (built by `pip install -r requirements.txt` on
x86_64 Linux, where oneDNN's PyPI wheels exist) registers five handlers:
the forward pass, the input gradient and the kernel gradient of a 2-D NHWC
convolution with an HWIO kernel, fp32 or bf16, any strides, padding and
feature groups; and the training pass of BatchNorm (batch statistics) and its
gradient. They run on the buffers as JAX holds them (no layout copy outside
oneDNN), one call at a time with every core.

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
API = 3  # the handlers this module calls; cnn-onednn's own API number must be the same


@functools.cache
def _loaded() -> str | None:
  """oneDNN's version once its handlers are registered; None (and one log line) if the
  extension is not installed, does not load, or is an older build than this code."""
  try:
    import cnn_onednn  # pylint: disable=import-outside-toplevel
    installed = getattr(cnn_onednn, "API", 1)
    if installed != API:
      logging.warning("the installed cnn-onednn has API %s, this code calls API %s: CPU "
                      "convolutions use the built-in algorithms (slower) until `pip install -r "
                      "requirements.txt` rebuilds it", installed, API)
      return None
    version = cnn_onednn.load()
  except (ImportError, OSError, AttributeError) as e:
    logging.info("oneDNN convolutions unavailable (%s: %s); CPU convolutions use the built-in "
                 "algorithms (pip install -r requirements.txt builds them on x86_64 Linux)",
                 type(e).__name__, e)
    return None
  logging.debug("oneDNN %s convolutions and BatchNorm through XLA's FFI", version)
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
  return jax.ffi.ffi_call(cnn_onednn.target("conv_" + product),
                          jax.ShapeDtypeStruct(out_shape, a.dtype),
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


def _vector(x):
  return jax.ShapeDtypeStruct((x.shape[-1],), jax.numpy.float32)


def _mask(x):
  """The fused ReLU's mask (oneDNN's workspace) for the batch x, as uint8 bytes."""
  import cnn_onednn  # pylint: disable=import-outside-toplevel
  size = cnn_onednn.batchnorm_mask_bytes(*x.shape, np.dtype(x.dtype) != np.dtype("float32"))
  return jax.ShapeDtypeStruct((size,), jax.numpy.uint8)


def _bn_forward(x, scale, bias, epsilon, relu):
  import cnn_onednn  # pylint: disable=import-outside-toplevel
  outputs = (jax.ShapeDtypeStruct(x.shape, x.dtype), _vector(x), _vector(x))
  return jax.ffi.ffi_call(
      cnn_onednn.target("batchnorm_relu_forward" if relu else "batchnorm_forward"),
      outputs + ((_mask(x),) if relu else ()), vmap_method="sequential")(
          x, scale, bias, epsilon=np.float32(epsilon))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm(x, scale, bias, epsilon: float, relu: bool):
  """(y, mean, variance) of BatchNorm in training: x (N,H,W,C) normalised with
  its own statistics over N, H and W (the biased variance, as flax's), then
  scaled and shifted, and with `relu` passed through a ReLU in the same pass
  (its gradient 0 where the output is 0, as `nn.relu`'s). The statistics'
  gradients are not propagated: they feed only the running averages, and
  `layers.BatchNorm` stops them."""
  return tuple(_bn_forward(x, scale, bias, epsilon, relu)[:3])


def _batch_norm_fwd(x, scale, bias, epsilon, relu):
  y, mean, variance, *mask = _bn_forward(x, scale, bias, epsilon, relu)
  return (y, mean, variance), (x, scale, mean, variance, *mask)


def _batch_norm_bwd(epsilon, relu, residuals, cotangents):
  import cnn_onednn  # pylint: disable=import-outside-toplevel
  x, scale, mean, variance, *mask = residuals
  dy = cotangents[0].astype(x.dtype)
  return tuple(jax.ffi.ffi_call(
      cnn_onednn.target("batchnorm_relu_backward" if relu else "batchnorm_backward"),
      (jax.ShapeDtypeStruct(x.shape, x.dtype), _vector(x), _vector(x)),
      vmap_method="sequential")(x, dy, scale, mean, variance, *mask,
                                epsilon=np.float32(epsilon)))


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)
