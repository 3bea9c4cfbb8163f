"""Where a speedrun's device time goes, kernel by kernel (`--profile`).

One more run (not a timed one) is traced with `jax.profiler.trace`, and the
trace is read back with `jax.profiler.ProfileData` (no TensorBoard needed):
every event the device executed, grouped by the XLA operation it belongs to
(its `hlo_op` stat; a kernel without one, e.g. a library call, by its own
name) within its compiled program (`hlo_module`: the step, an epoch's data,
the whitening fit, the evaluation). On a GPU the events are the kernels on
the device's streams (CUPTI's timestamps); on the CPU, the operations XLA's
thunks ran on the host threads. The table answers the issue's last question
when ours is slower than airbench: which kernels take the time.
"""
import collections
import glob
import os
from typing import Iterable

# The lines a device plane's stream lines are summarised into (the profiler's
# kStepLineName, kXlaModuleLineName, kXlaOpLineName, ...): counting them would
# count each kernel twice.
DERIVED_LINES = ("Steps", "XLA Modules", "XLA Ops", "Async XLA Ops", "XLA TraceMe",
                 "TensorFlow Ops", "TensorFlow Name Scope", "Framework Ops", "Launch Stats",
                 "Source code", "SparseCore")


def stats(event) -> dict:
  return dict(event.stats)


def plane_lines(plane) -> list:
  """The lines of a device plane that hold what it executed, each once: a
  GPU's streams (CUPTI's "Stream #N" lines; else every line but the
  derived ones), a TPU's "XLA Ops"."""
  lines = list(plane.lines)
  if plane.name.startswith("/device:TPU:"):
    return [line for line in lines if line.name == "XLA Ops"]
  streams = [line for line in lines if line.name.startswith("Stream")]
  return streams or [line for line in lines if not line.name.startswith(DERIVED_LINES)]


def device_events(data) -> tuple[str, list]:
  """(where, events): the kernels of the first accelerator plane, else the
  host's XLA operations (events with an `hlo_op` stat)."""
  for plane in data.planes:
    if plane.name.startswith(("/device:GPU:", "/device:TPU:")):
      events = [e for line in plane_lines(plane) for e in line.events]
      if events:
        return plane.name, events
  events = [e for plane in data.planes if plane.name.startswith("/host:CPU")
            for line in plane.lines for e in line.events if "hlo_op" in stats(e)]
  return "/host:CPU", events


def kernel_table(events: Iterable, top: int = 15) -> dict:
  """Device time by program and by operation: total milliseconds, each
  program's, and the `top` operations with their calls and share."""
  by_op = collections.defaultdict(lambda: [0.0, 0])
  kernel = {}  # an operation's first kernel's name (a GPU library's kernel says what it is)
  by_module = collections.defaultdict(float)
  for event in events:
    s = stats(event)
    ms = event.duration_ns / 1e6
    module = str(s.get("hlo_module", "?"))
    key = (module, str(s.get("hlo_op", event.name)))
    by_op[key][0] += ms
    by_op[key][1] += 1
    kernel.setdefault(key, event.name)
    by_module[module] += ms
  total = sum(by_module.values())
  ranked = sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]
  return {"device_ms": round(total, 3),
          "modules": {m: round(v, 3) for m, v in sorted(by_module.items(), key=lambda kv: -kv[1])},
          "top": [{"module": m, "op": op, "kernel": kernel[m, op], "ms": round(ms, 3),
                   "calls": calls, "share": round(ms / total, 4) if total else 0.0}
                  for (m, op), (ms, calls) in ranked]}


def read_trace(trace_dir: str, top: int = 15) -> dict:
  """The kernel table of the newest trace under `trace_dir`."""
  from jax.profiler import ProfileData  # pylint: disable=import-outside-toplevel
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no .xplane.pb under {trace_dir}")
  where, events = device_events(ProfileData.from_file(paths[-1]))
  return {"where": where, **kernel_table(events, top)}
