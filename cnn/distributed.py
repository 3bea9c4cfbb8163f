"""Joining the processes of a multi-host job before JAX touches any device.

Three ways in, decided by `launch_plan` (a pure function of the flags and the
environment, so every case is testable without a cluster):

- Explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`):
  any launcher, e.g. several processes on one machine.
- SLURM: JAX's own detection finds the coordinator, the process count and
  this process's index, but it gives every process only the GPU numbered
  by its node-local rank. That is right for one task per GPU and wrong for
  one task per node (a node with 8 GPUs would train on one), so the local
  GPUs are chosen here: all of them with one task per node, the task's own
  one with one task per GPU (`--gpus-per-task=1` leaves each task a single
  visible GPU, number 0).
- Everything else JAX can detect (GCE TPU VMs through the metadata server,
  GKE TPU and GPU jobs, Open MPI, Kubernetes): `jax.distributed.initialize()`
  with no arguments, JAX's own detection. A machine where nothing is
  detected runs as a single process.

After `initialize`, `jax.devices()` lists the devices of every process, the
mesh in `train.py` spans them all, and each process feeds its slice of every
global batch. Nothing else in the code depends on the number of hosts.
"""
import logging
import os
import re
from typing import Mapping

import jax

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
              "SLURM_LOCALID")


def _expand_counts(spec: str) -> list[int]:
  """SLURM's compressed per-node counts: "4(x2),2" -> [4, 4, 2]."""
  counts = []
  for part in spec.split(","):
    m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
    if m:
      counts += [int(m.group(1))] * int(m.group(2) or 1)
  return counts


def slurm_tasks_on_this_node(env: Mapping[str, str]) -> int:
  """Tasks of this job step that share this process's node."""
  if env.get("SLURM_NTASKS_PER_NODE", "").isdigit():
    return int(env["SLURM_NTASKS_PER_NODE"])
  counts = _expand_counts(env.get("SLURM_STEP_TASKS_PER_NODE")
                          or env.get("SLURM_TASKS_PER_NODE", ""))
  node = int(env.get("SLURM_NODEID", "0"))
  if 0 <= node < len(counts):
    return counts[node]
  nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
  return max(1, int(env["SLURM_NTASKS"]) // max(nodes, 1))


def visible_gpus(env: Mapping[str, str]) -> int | None:
  """GPUs this process may use, as SLURM/CUDA announce them (None: unknown)."""
  cuda = env.get("CUDA_VISIBLE_DEVICES")
  if cuda is not None:
    return len([d for d in cuda.split(",") if d.strip() and d.strip() != "-1"])
  for var in ("SLURM_GPUS_ON_NODE", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
    value = env.get(var, "")
    if value.isdigit() and var == "SLURM_GPUS_ON_NODE":
      return int(value)
    if value and var != "SLURM_GPUS_ON_NODE":
      return len(value.split(","))
  return None


def slurm_local_devices(env: Mapping[str, str]) -> list[int] | None:
  """The local GPU ids one SLURM task should own (None: leave it to JAX)."""
  gpus = visible_gpus(env)
  if not gpus:
    return None  # a CPU job: nothing to choose
  tasks = slurm_tasks_on_this_node(env)
  if gpus == 1:
    return [0]  # --gpus-per-task=1: the one GPU this task sees is number 0
  if tasks == 1:
    return list(range(gpus))  # one task per node: every GPU of the node
  if gpus % tasks == 0:  # e.g. 2 tasks x 4 GPUs on an 8-GPU node
    per_task = gpus // tasks
    local = int(env["SLURM_LOCALID"])
    return list(range(local * per_task, (local + 1) * per_task))
  return None


def launch_plan(env: Mapping[str, str], coordinator_address: str = "",
                num_processes: int = 1, process_id: int = 0) -> dict | None:
  """Keyword arguments for `jax.distributed.initialize`, or None for "try
  JAX's own cluster detection" (which may find a single process)."""
  if num_processes > 1 or coordinator_address:
    return {"coordinator_address": coordinator_address, "num_processes": num_processes,
            "process_id": process_id}
  if all(v in env for v in SLURM_VARS):
    return {"cluster_detection_method": "slurm", "local_device_ids": slurm_local_devices(env)}
  return None


def initialize(coordinator_address: str = "", num_processes: int = 1,
               process_id: int = 0, env: Mapping[str, str] | None = None) -> None:
  """Joins the job's processes (see the module docstring); a no-op alone."""
  env = os.environ if env is None else env
  plan = launch_plan(env, coordinator_address, num_processes, process_id)
  # CPU devices need a collectives backend across processes (GPU/TPU ignore it).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if plan is not None:
    jax.distributed.initialize(**plan)
    return
  try:
    jax.distributed.initialize()  # JAX's detection: TPU VMs, GKE, Open MPI, Kubernetes
  except ValueError:  # nothing detected: "coordinator_address should be defined"
    logging.debug("no cluster detected: one process")


def describe() -> str:
  """The startup line: backend, devices, processes and the mesh they form."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (f"backend {jax.default_backend()} ({', '.join(kinds)}): {len(devices)} devices, "
          f"{jax.local_device_count()} local, {jax.process_count()} processes "
          f"(this is process {jax.process_index()})")
