"""Backend settings a config asks for, applied before JAX starts a backend.

XLA reads `XLA_FLAGS` once, when the first device is touched, so `main.py`
calls `configure` before anything else uses JAX.

`config.gpu_deterministic_ops` adds `--xla_gpu_deterministic_ops=true`: GPU
kernels that are otherwise free to accumulate in any order (scatter-adds,
some cuDNN convolution algorithms, autotuning picks) become deterministic,
so the same seed on the same GPU model and device count gives the same
numbers run after run, at some cost in speed. CPU and TPU runs are
deterministic without it (the flag is ignored there).
"""
import importlib.metadata
import logging
import os
from typing import Iterable, MutableMapping

import ml_collections

DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


def xla_flags(config: ml_collections.ConfigDict, current: str) -> str:
  """`current` XLA_FLAGS plus what `config` asks for (never a flag twice)."""
  flags = current.split()
  if config.get("gpu_deterministic_ops", False) and not any(
      f.startswith("--xla_gpu_deterministic_ops") for f in flags):
    flags.append(DETERMINISM_FLAG)
  return " ".join(flags)


def configure(config: ml_collections.ConfigDict,
              environ: MutableMapping[str, str] = os.environ) -> None:
  flags = xla_flags(config, environ.get("XLA_FLAGS", ""))
  if flags:
    environ["XLA_FLAGS"] = flags


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
