"""Builds src/cnn_onednn/*.cc into cnn_onednn/_kernels.so (setuptools; headers
from the build environment's oneDNN devel wheel and jaxlib). The shared
library is loaded with ctypes, not imported: it defines XLA FFI handlers, not
a Python module."""
import importlib.metadata
import importlib.util
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _include_dir(distribution: str, header: str) -> str:
  """The include folder a wheel installed `header` under (its data files land in the
  build environment's prefix, which is not on the compiler's path)."""
  for f in importlib.metadata.files(distribution) or ():
    if str(f).replace("\\", "/").endswith(header):
      path = Path(f.locate()).resolve()
      return str(path.parents[len(Path(header).parts) - 1])
  raise RuntimeError(f"{distribution} has no {header}")


def _ffi_include_dir() -> str:
  (jaxlib,) = importlib.util.find_spec("jaxlib").submodule_search_locations
  return str(Path(jaxlib) / "include")


class BuildSharedLibrary(build_ext):
  """A plain shared library (no Python module init): named _kernels.so."""

  def get_ext_filename(self, fullname):
    return str(Path(*fullname.split(".")).with_suffix(".so"))

  def get_export_symbols(self, ext):
    return []


setup(
    ext_modules=[Extension(
        "cnn_onednn._kernels", sources=["src/cnn_onednn/conv.cc", "src/cnn_onednn/batchnorm.cc"],
        depends=["src/cnn_onednn/common.h"], language="c++",
        # Without a C++ compiler the package installs without the library: cnn_onednn.load()
        # then fails and the project uses its built-in algorithms (one log line says so).
        optional=True,
        include_dirs=[_include_dir("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp"),
                      _ffi_include_dir()],
        # oneDNN's symbols resolve against libdnnl.so.3, loaded first (cnn_onednn.load).
        extra_compile_args=["-std=c++17", "-O2", "-Wno-return-type"])],
    cmdclass={"build_ext": BuildSharedLibrary},
)
