"""Backend settings a config asks for, applied before JAX starts a backend.

XLA reads `XLA_FLAGS` once, when the first device is touched, so `main.py`
calls `configure` before anything else uses JAX.

`config.backend.gpu_deterministic_ops` adds `--xla_gpu_deterministic_ops=true`: GPU
kernels that are otherwise free to accumulate in any order (scatter-adds,
some cuDNN convolution algorithms, autotuning picks) become deterministic,
so the same seed on the same GPU model and device count gives the same
numbers run after run, at some cost in speed. CPU and TPU runs are
deterministic without it (the flag is ignored there).

On the CPU, `configure` also makes glibc keep the memory it frees
(`retain_host_memory`): XLA:CPU allocates each step's intermediate buffers as
one block (306 MB for a ResNet-20 step at batch 128) from a worker thread,
glibc serves such a block with a fresh `mmap` and unmaps it when the step ends,
so every step paid about 75,000 page faults and the zeroing of the whole block
(measured with strace/perf on the 2-core AMD EPYC: a third of the step's CPU
time in the kernel). Kept, the next step reuses the same pages: the ResNet-20
train step runs at 676 instead of 444 images/s (benchmarks/README.md).
"""
import ctypes
import ctypes.util
import importlib.metadata
import logging
import os
import platform
from typing import Iterable, Mapping, MutableMapping

import ml_collections

from cnn.schema import Section, Setting

DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"

CONFIG = Section("backend", "how XLA runs", {
    "gpu_deterministic_ops": Setting(False, "True: --xla_gpu_deterministic_ops (same numbers "
                                     "every run on a GPU, somewhat slower; CPU and TPU are "
                                     "deterministic anyway)", example=True),
}, renamed={"gpu_deterministic_ops": "gpu_deterministic_ops"})


def xla_flags(config: ml_collections.ConfigDict, current: str) -> str:
  """`current` XLA_FLAGS plus what `config` asks for (never a flag twice)."""
  flags = current.split()
  if config.backend.gpu_deterministic_ops and not any(
      f.startswith("--xla_gpu_deterministic_ops") for f in flags):
    flags.append(DETERMINISM_FLAG)
  return " ".join(flags)


def configure(config: ml_collections.ConfigDict,
              environ: MutableMapping[str, str] = os.environ) -> None:
  """XLA flags and host memory, before JAX starts a backend."""
  flags = xla_flags(config, environ.get("XLA_FLAGS", ""))
  if flags:
    environ["XLA_FLAGS"] = flags
  retain_host_memory(environ)


RETAIN_VARIABLE = "CNN_RETAIN_HOST_MEMORY"  # "0": leave glibc's defaults
# glibc's malloc settings (mallopt's parameter numbers, from malloc.h), the
# environment variable that sets each at startup, and the value we set.
HOST_MEMORY_SETTINGS = (
    ("MALLOC_ARENA_MAX", -8, 1),  # one arena: XLA's worker threads allocate from the main heap,
    ("MALLOC_MMAP_MAX_", -4, 0),  # which serves large blocks from the heap, not mmap,
    ("MALLOC_TRIM_THRESHOLD_", -1, -1),  # and never gives freed memory back (-1: no trimming)
)


def runs_on_cpu(environ: Mapping[str, str], present: Iterable[str]) -> bool:
  """Whether JAX will run on the CPU: JAX_PLATFORMS says so, or it is unset and
  the machine has no GPU or TPU device files."""
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(path in ACCELERATOR_DEVICE_FILES for path in present)


def retain_host_memory(environ: Mapping[str, str] = os.environ) -> list[str]:
  """Makes glibc keep freed memory for reuse (HOST_MEMORY_SETTINGS), where JAX
  runs on the CPU; returns the settings applied. Call it before JAX's CPU
  backend starts (its threads pick their malloc arena on first use). A
  setting the user gave in the environment is left to glibc, which read it at
  startup; elsewhere (GPU/TPU hosts, other C libraries) nothing changes.

  The price is memory: the process keeps its peak heap, and with
  asynchronous dispatch two steps' blocks can be live at once, so the peak
  is up to one step's working set higher (a CIFAR-10 epoch of ResNet-20 v1:
  5.2 GB peak RSS instead of 2.0 GB, at 1.5x the speed).
  `CNN_RETAIN_HOST_MEMORY=0` in the environment leaves glibc's defaults, like
  `XLA_PYTHON_CLIENT_PREALLOCATE=false` for JAX's GPU memory."""
  if environ.get(RETAIN_VARIABLE, "1") == "0" or platform.libc_ver()[0] != "glibc" or (
      not runs_on_cpu(environ, [p for p in ACCELERATOR_DEVICE_FILES if os.path.exists(p)])):
    return []
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  applied = [f"{name}={value}" for name, parameter, value in HOST_MEMORY_SETTINGS
             if name not in environ and libc.mallopt(parameter, value) == 1]
  if applied:
    logging.debug("glibc keeps freed memory for reuse (%s)", ", ".join(applied))
  return applied


# The accelerator wheels must match the installed jax (requirements.txt pins
# 0.10.2 for CPU; accelerator images bring their own, e.g. 0.11.x).
JAX_VERSION = importlib.metadata.version("jax")
ACCELERATOR_DEVICE_FILES = {
    "/dev/nvidia0": f'pip install "jax[cuda12]=={JAX_VERSION}" (or jax[cuda13] for CUDA 13)',
    "/dev/accel0": f'pip install "jax[tpu]=={JAX_VERSION}"',
    "/dev/vfio/0": f'pip install "jax[tpu]=={JAX_VERSION}"',
}


def unused_accelerator_hint(backend: str, present: Iterable[str]) -> str | None:
  """A warning when this machine has GPUs or TPUs but JAX runs on the CPU (the
  pinned jaxlib is the CPU build), naming the install line; else None."""
  if backend != "cpu":
    return None
  for path in present:
    if path in ACCELERATOR_DEVICE_FILES:
      return (f"this machine has accelerators ({path}) but JAX runs on the CPU: "
              f"{ACCELERATOR_DEVICE_FILES[path]}")
  return None


def warn_if_accelerator_unused(backend: str) -> None:
  hint = unused_accelerator_hint(
      backend, [p for p in ACCELERATOR_DEVICE_FILES if os.path.exists(p)])
  if hint:
    logging.warning(hint)
