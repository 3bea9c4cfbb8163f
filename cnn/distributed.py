"""Joining the processes of a multi-host job (TPU pod slices, SLURM, or
explicit flags) before JAX touches any device.

After `initialize`, `jax.devices()` lists the devices of every process, the
mesh in `train.py` spans them all, and each process feeds its slice of every
global batch. Nothing else in the code depends on the number of hosts.
"""
import os

import jax


def in_multiprocess_cluster() -> bool:
  """A launcher that `jax.distributed.initialize()` can auto-detect."""
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return slurm_tasks > 1 or "," in tpu_hosts


def initialize(coordinator_address: str = "", num_processes: int = 1,
               process_id: int = 0) -> None:
  """Explicit flags win; otherwise auto-detect; a single process does nothing."""
  if num_processes > 1 or coordinator_address:
    # CPU devices need a collectives backend across processes (GPU/TPU ignore it).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif in_multiprocess_cluster():
    jax.distributed.initialize()
