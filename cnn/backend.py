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
import os
from typing import MutableMapping

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
