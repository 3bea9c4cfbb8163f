"""What does running the same devices as several processes cost, and what
does a host sync per step add? Side by side, alternating, medians.

  CNN_ARCHIVE_DIR=../shared/datasets python benchmarks/multiprocess.py [--devices 4] [--repeats 3]

Runs `main.py` (configs/tiny_mnist.py, 64 steps of batch 64 per epoch, 2
epochs) as a user would and reports the training images/s of the second
epoch (compile excluded) from each run's timing.jsonl:

- 1 process with all `--devices` simulated CPU devices;
- the same devices as 2 processes joined on loopback, the loop syncing with
  the host only at sync points (`log_every_steps=16`: the code as it is);
- the same 2 processes syncing at every step (`log_every_steps=1`: every step
  is a sync point, which is what every multi-process step did before issue
  14: an all-gather of the stop flags that waits for the device).

The first two differ by what multi-process costs on this machine (CPU
collectives between processes go through gloo over TCP, and the processes
share the cores); the last two by the per-step host sync alone.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/tiny_mnist.py", "--config.data.train_split=train[:4096]",
        "--config.num_epochs=2"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(processes: int, devices: int, log_every: int, workdir: Path) -> float:
  """Training images/s of epoch 2 for `devices` split over `processes`."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count="
         f"{devices // processes}", "TF_CPP_MIN_LOG_LEVEL": "2"}
  port = free_port()
  flags = lambda i: ([f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                      f"--process_id={i}"] if processes > 1 else [])
  procs = [
      subprocess.Popen([
          sys.executable, "main.py", *ARGS, f"--config.log.every_steps={log_every}",
          f"--workdir={workdir}", *flags(i)
      ],
                       cwd=REPO,
                       env=env,
                       stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE,
                       text=True) for i in range(processes)
  ]
  errors = [p.communicate(timeout=1200)[1] for p in procs]
  if any(p.returncode for p in procs):
    raise SystemExit(f"main.py failed:\n{errors[0][-2000:]}")
  timing = [json.loads(l) for l in (workdir / "timing.jsonl").read_text().splitlines()]
  return timing[-1]["train_images_per_s"]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--devices", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  layouts = [(1, args.devices, 16), (2, args.devices, 16), (2, args.devices, 1)]
  rates = {layout: [] for layout in layouts}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.repeats):
      for layout in layouts:
        rates[layout].append(run(*layout, Path(tmp) / f"{'x'.join(map(str, layout))}_{r}"))
  base = statistics.median(rates[layouts[0]])
  print(f"| processes x devices each | host syncs | train images/s (median of {args.repeats}) "
        "| vs 1 process |")
  print("|---|---|---:|---:|")
  for (processes, devices, log_every), values in rates.items():
    median = statistics.median(values)
    syncs = "every step" if log_every == 1 else f"every {log_every} steps"
    print(f"| {processes} x {devices // processes} | {syncs} | {median:.0f} | "
          f"{median / base:.2f} |")


if __name__ == "__main__":
  main()
