"""oneDNN convolutions for JAX on the CPU, through XLA's foreign function interface.

`load()` loads oneDNN (`libdnnl.so.3` from the onednn-cpu-gomp wheel, which
puts it in the environment's lib folder, off the loader's path) and this
package's handlers (`_kernels.so`, built from conv.cc and batchnorm.cc by
pip), and registers them with JAX for the CPU platform, once per process. The
calls themselves are made by the cnn project (cnn/kernels/onednn.py).
"""
import ctypes
import functools
import importlib.metadata
from pathlib import Path

import jax

# The handlers' names and signatures, as cnn/kernels/onednn.py calls them: it uses this
# package only where its own API number is the same (an older build in the environment, from
# before a change to the handlers, would otherwise fail inside XLA).
API = 3
HANDLERS = ("conv_forward", "conv_input_grad", "conv_kernel_grad", "batchnorm_forward",
            "batchnorm_backward", "batchnorm_relu_forward", "batchnorm_relu_backward")


def target(handler: str) -> str:
  """The FFI target name of a handler (one of HANDLERS)."""
  return f"cnn_onednn_{handler}"


def libdnnl_path() -> str:
  for f in importlib.metadata.files("onednn-cpu-gomp") or ():
    if f.name == "libdnnl.so.3":
      return str(f.locate())
  raise OSError("the onednn-cpu-gomp distribution has no libdnnl.so.3")


@functools.cache
def _library() -> ctypes.CDLL:
  ctypes.CDLL(libdnnl_path(), mode=ctypes.RTLD_GLOBAL)
  built = Path(__file__).with_name("_kernels.so")
  if not built.exists():
    raise OSError(f"{built.name} was not built (no C++ compiler when pip installed cnn-onednn?)")
  library = ctypes.CDLL(str(built))
  library.cnn_onednn_batchnorm_mask_bytes.restype = ctypes.c_int64
  library.cnn_onednn_batchnorm_mask_bytes.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int]
  return library


@functools.cache
def batchnorm_mask_bytes(n: int, h: int, w: int, c: int, bf16: bool) -> int:
  """The size of batchnorm_relu_forward's mask output for an NHWC batch."""
  size = _library().cnn_onednn_batchnorm_mask_bytes(n, h, w, c, int(bf16))
  if size < 0:
    raise OSError(f"oneDNN has no fused BatchNorm+ReLU for {(n, h, w, c)}")
  return size


@functools.cache
def load() -> str:
  """Registers the handlers (once); returns oneDNN's version, e.g. "3.2"."""
  library = _library()
  for handler in HANDLERS:
    jax.ffi.register_ffi_target(target(handler),
                                jax.ffi.pycapsule(getattr(library, target(handler))),
                                platform="cpu")
  version = library.cnn_onednn_version()
  return f"{version // 100}.{version % 100}"
