"""cnn.backend.retain_host_memory: glibc keeps the memory XLA:CPU frees, so a
train step reuses last step's pages instead of faulting in a fresh block
(cnn/backend.py says why; benchmarks/README.md has the 1.5x it buys).

Each case runs in a fresh process (malloc settings are per process, and must
be made before threads allocate), which does what XLA:CPU does every step:
a worker thread allocates one large block, writes it, frees it.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK_MIB = 256
PROBE = f"""
import ctypes, json, os, resource, threading
import ml_collections
from cnn import backend
applied = None
if os.environ["PROBE_MODE"] == "configure":  # the path main.py takes
  backend.configure(ml_collections.ConfigDict({{"backend": {{"gpu_deterministic_ops": False}}}}))
elif os.environ["PROBE_MODE"] == "retain":
  applied = [s.split("=")[0] for s in backend.retain_host_memory()]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def step():  # a worker thread's per-step block, written, then freed
  def work():
    p = libc.malloc({BLOCK_MIB} << 20)
    ctypes.memset(p, 1, {BLOCK_MIB} << 20)
    libc.free(p)
  t = threading.Thread(target=work)
  t.start()
  t.join()

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
rss_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
print(json.dumps({{"applied": applied, "faults": faults, "rss_mib": rss_kib // 1024}}))
"""
PAGES = (BLOCK_MIB << 20) // 4096

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


def probe(mode: str, **env) -> dict:
  environ = {
      k: v
      for k, v in os.environ.items()
      if not k.startswith("MALLOC_") and k not in ("JAX_PLATFORMS", "CNN_RETAIN_HOST_MEMORY")
  }
  environ.update(env, PROBE_MODE=mode, PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True,
                       text=True, check=True, timeout=120)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_by_default_every_step_faults_in_a_fresh_block():
  result = probe("none")
  assert result["faults"] > PAGES * 0.9, result  # each page of the block touched anew
  assert result["rss_mib"] < BLOCK_MIB / 2, result  # and given back when freed


def test_configure_on_the_cpu_keeps_the_block_for_the_next_step():
  for mode in ("configure", "retain"):
    result = probe(mode, JAX_PLATFORMS="cpu")
    assert result["faults"] < PAGES * 0.05, (mode, result)  # the same pages, already there
    assert result["rss_mib"] >= BLOCK_MIB, (mode, result)
  assert result["applied"] == ["MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"]


def test_cnn_retain_host_memory_0_leaves_glibc_alone():
  result = probe("configure", JAX_PLATFORMS="cpu", CNN_RETAIN_HOST_MEMORY="0")
  assert result["faults"] > PAGES * 0.9 and result["rss_mib"] < BLOCK_MIB / 2, result


def test_nothing_changes_on_a_gpu_or_tpu_backend():
  for platforms in ("cuda", "tpu,cpu"):
    result = probe("retain", JAX_PLATFORMS=platforms)
    assert result["applied"] == [] and result["faults"] > PAGES * 0.9, (platforms, result)


def test_a_setting_the_user_gave_is_left_to_them():
  # MALLOC_ARENA_MAX=8 from the environment: glibc applied it at startup, we leave it,
  # and with several arenas the worker's block is mmapped afresh again.
  result = probe("retain", JAX_PLATFORMS="cpu", MALLOC_ARENA_MAX="8")
  assert result["applied"] == ["MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"], result
  assert result["faults"] > PAGES * 0.9, result


def test_runs_on_cpu_reads_jax_platforms_then_the_device_files():
  from cnn import backend
  assert backend.runs_on_cpu({"JAX_PLATFORMS": "cpu"}, ["/dev/nvidia0"])
  assert not backend.runs_on_cpu({"JAX_PLATFORMS": "cuda,cpu"}, [])
  assert backend.runs_on_cpu({}, [])
  assert not backend.runs_on_cpu({}, ["/dev/accel0"])
