"""A one-shot accelerator validation kit, run in short resumable pieces
(GitHub issue #16): train-step throughput against PyTorch, the time-to-94%
speedrun, and the paper rows of the README's table, on a rented GPU/TPU box.

  python tools/accelerator_kit.py --out DIR --budget-minutes 9   # repeat until done
  python tools/accelerator_kit.py pack --out DIR --part-mib 48   # DIR -> parts to carry
  python tools/accelerator_kit.py unpack --parts DIR-parts --out DIR
  python tools/accelerator_kit.py report --out DIR               # markdown of the results
  python tools/accelerator_kit.py record --out DIR               # finished rows -> results/

Each call runs the next pieces of a fixed queue (`--queue full`, the
default) and exits before its budget: a box where one command may run ~10
minutes and move ~64 MiB, possibly a fresh machine each time, finishes the
queue in repeated calls as long as DIR travels with them. The queue, in
order (14 pieces):

  (a) throughput_{resnet20,resnet56,vgg16}: images/s of our train step
      (benchmarks/run.py's JaxStepper) and of its PyTorch twin
      (benchmarks/torch_twins.py, CUDA when torch sees a GPU) on the same
      device, fp32 and bf16, batch 128 and 512; the two alternate, medians
      over rounds, ratio of medians. Without torch the JAX column is still
      measured ("no torch").
  (a') sweep_resnet20: 8 and 32 seeds of ResNet-20 vmapped in one step
      (benchmarks/seed_sweep.py, cnn/sweep.py's stacked step) against one
      seed alone on the same device: images/s per seed and in total.
  (b) speedrun_seed{0,1,2}: configs/speedrun_cifar10.py through
      benchmarks/speedrun.py's `one_run`, the time to 94% (a seed starts
      when it fits the budget whole; a finished seed's checkpoint is deleted).
  (c) the paper rows: resnet20v1, resnet20v2, resnet56v1, resnet56v2,
      vgg16 (paper protocol), resnet110v1, resnet110v2 (configs/*_cifar10.py),
      each trained over as many calls as it takes in DIR/runs/NAME with one
      checkpoint kept; when the budget is nearly spent the kit sends SIGTERM
      (`--margin-seconds` before its end: main.py saves the step and exits
      with status 0) and SIGKILL if that takes too long. A finished row is
      recorded with `python -m cnn.report.results_table record` into
      `--results-dir` (default results/); `--readme README.md` then renders
      the README's table, `--speedrun-doc docs/experiments.md` the speedrun
      block.

DIR/state.json (written atomically) says what is done, each piece's results,
attempts, seconds and last step; results/ holds each finished piece's JSON
with the hardware (JAX's devices, PyTorch's CUDA device, CPU, versions,
date); logs/ each piece's output. A call killed outright (the machine lost)
costs only the piece in flight: a throughput piece is redone, a training one
resumes from its last checkpoint (its child gets SIGTERM when the kit dies).
Exit status 0 when the budget ran out cleanly or the queue is done, 2 with
one line for what you can fix, 1 when a piece failed (see its log).

On a GPU box. Its image usually has jax with CUDA, flax, optax, orbax,
numpy, but no TensorFlow, tensorflow-datasets or ml_collections; do not
install requirements.txt there (CPU jaxlib). Carry ml_collections as a
wheel: `pip download ml_collections==1.1.0 --no-deps -d wheels/` here,
`pip install --no-deps wheels/*.whl` there (requirements-accelerator.txt);
safetensors too if the recorded rows should ship their weights (without it
they are recorded with their numbers only).
Without TensorFlow the data path is TF-free: every training piece runs with
`--config.data.on_device=True` and reads the original files, so set
CNN_ARCHIVE_DIR to a folder with cifar10/cifar-10-binary.tar.gz (or its
data_batch_*.bin and test_batch.bin) and mnist/ for the tiny queue. Then,
with the records kept in DIR so that they travel with it:

  CNN_ARCHIVE_DIR=/data python tools/accelerator_kit.py --out DIR --results-dir DIR/records

Back home, `python tools/accelerator_kit.py record --out DIR` records the
finished rows into results/ too (from DIR's checkpoints, with the box's
hardware; it trains nothing), and `--only NAME,...` (pieces or kinds:
throughput, speedrun, train) restricts a call to part of the queue.

Carrying DIR: the summary line gives its size. Over one transfer (VGG-16's
checkpoint with its momentum is ~120 MB) `pack` writes it as parts of at most
`--part-mib` MiB (one tar stream cut in pieces, with SHA-256s in a
manifest): copy one part per call, then `unpack` on the other side.

`--queue tiny` is the same machinery at CPU size (for tests): ResNet-20
throughput at batch 8, 2 seeds stacked at batch 8, a one-epoch MNIST
"speedrun", a 4-epoch MNIST row (128 steps).
"""
import argparse
import datetime
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

# The kit times and trains with the benchmarks' own code (one train-step timer,
# one PyTorch worker, one supervised main.py), so its numbers are theirs.
from benchmarks import run as bench  # noqa: E402
from benchmarks import seed_sweep, speedrun  # noqa: E402
from cnn import workdir_lock  # noqa: E402
from cnn.errors import UserError  # noqa: E402
from cnn.report import results_table  # noqa: E402
from tools import carry  # noqa: E402

ROOT = bench.ROOT
MIB = 2**20
STATE, KIT_LOCK = "state.json", "kit.lock"
RESERVE_S = 5.0  # the kit's own seconds after its last child: state, summary
RECORD_S = 60.0  # results_table record (imports JAX, reads the checkpoint), until measured
TARGET = 0.94

# ------------------------------------------------------------------ queues


def throughput_piece(model: str, registered: str, batch_sizes: tuple[int, ...],
                     dtypes: tuple[str, ...], repeats: int, estimate_s: float,
                     seconds: float | None = None, steps: int | None = None) -> dict:
  """One model's grid of (batch, dtype), JAX against PyTorch. Each timing
  lasts about `seconds` (steps calibrated per candidate) or `steps` steps."""
  return {"name": f"throughput_{model}", "kind": "throughput", "model": model,
          "registered": registered, "batch_sizes": list(batch_sizes), "dtypes": list(dtypes),
          "repeats": repeats, "seconds": seconds, "steps": steps, "estimate_s": estimate_s}


def sweep_piece(model: str, registered: str, seed_counts: tuple[int, ...], batch_size: int,
                steps: int, rounds: int, estimate_s: float) -> dict:
  """Seeds vmapped in one step against one seed alone (benchmarks/seed_sweep.py)."""
  return {"name": f"sweep_{model}", "kind": "sweep", "model": model, "registered": registered,
          "seeds": list(seed_counts), "batch_size": batch_size, "steps": steps,
          "rounds": rounds, "estimate_s": estimate_s}


def speedrun_piece(seed: int, config: str, overrides: list[str], estimate_s: float) -> dict:
  """One seed of the speedrun; one checkpoint kept while it runs (ResNet-9's,
  with momentum and EMA, is ~80 MB), none once it is done."""
  return {"name": f"speedrun_seed{seed}", "kind": "speedrun", "seed": seed, "config": config,
          "overrides": ["--config.checkpoint.keep=1", *overrides], "target": TARGET,
          "estimate_s": estimate_s}


def training_piece(config: str, overrides: tuple[str, ...] = ()) -> dict:
  """A row of the README's table: main.py until it finishes, one checkpoint
  kept (it is what travels), the TensorFlow-free data path."""
  return {"name": Path(config).stem, "kind": "train", "config": config,
          "overrides": ["--config.checkpoint.keep=1", "--config.data.on_device=True",
                        *overrides]}


DTYPES = ("float32", "bfloat16")
PAPER_ROWS = ("resnet20v1_cifar10", "resnet20v2_cifar10", "resnet56v1_cifar10",
              "resnet56v2_cifar10", "vgg16_cifar10", "resnet110v1_cifar10", "resnet110v2_cifar10")
# configs whose own protocol is "validation": the paper protocol's splits
PAPER_PROTOCOL = {"vgg16_cifar10": ("--config.protocol=paper", "--config.data.train_split=train",
                                    "--config.data.validation_split=")}


def full_queue() -> list[dict]:
  """The accelerator run; estimates are upper bounds for one H100-class GPU
  (compiles included), replaced by what earlier attempts took."""
  return [throughput_piece("resnet20", "resnet20_v1", (128, 512), DTYPES, 5, 240, seconds=1.0),
          throughput_piece("resnet56", "resnet56_v1", (128, 512), DTYPES, 5, 420, seconds=1.0),
          throughput_piece("vgg16", "vgg16", (128, 512), DTYPES, 5, 300, seconds=1.0),
          sweep_piece("resnet20", "resnet20_v1", (8, 32), 128, 20, 3, 300),
          *(speedrun_piece(seed, speedrun.CONFIG, [], 360) for seed in (0, 1, 2)),
          *(training_piece(f"configs/{name}.py", PAPER_PROTOCOL.get(name, ()))
            for name in PAPER_ROWS)]


TINY_DATA = ("--config.data.on_device=True", "--config.data.validation_split=",
             "--config.protocol=paper")


def tiny_queue() -> list[dict]:
  """The same three kinds at CPU size, for tests and a first look."""
  return [
      throughput_piece("resnet20", "resnet20_v1", (8,), ("float32",), 2, 120, steps=2),
      sweep_piece("resnet20", "resnet20_v1", (2,), 8, 2, 1, 120),
      speedrun_piece(0, "configs/tiny_mnist.py", [
          *TINY_DATA, "--config.num_epochs=1", "--config.data.train_split=train[:512]",
          "--config.data.test_split=test[:500]"
      ], 120),
      training_piece(
          "configs/tiny_mnist.py",
          (*TINY_DATA[1:], "--config.num_epochs=4", "--config.data.test_split=test[:1000]"))
  ]


QUEUES: dict[str, Callable[[], list[dict]]] = {"full": full_queue, "tiny": tiny_queue}

# ------------------------------------------------------------------- state


def write_json(path: Path, value) -> None:
  """Atomically (a temporary file, flushed, then renamed over `path`)."""
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(json.dumps(value, indent=1) + "\n")
    f.flush()
    os.fsync(f.fileno())
  tmp.replace(path)


def load_state(out: Path, queue: str) -> dict:
  path = out / STATE
  if not path.exists():
    return {"version": 1, "queue": queue, "calls": 0, "machines": {}, "pieces": {}}
  state = json.loads(path.read_text())
  if state["queue"] != queue:
    raise UserError(f"{out} holds the {state['queue']!r} queue; pass --queue {state['queue']} "
                    "or choose another --out")
  return state


def piece_state(state: dict, name: str) -> dict:
  return state["pieces"].setdefault(name, {"status": "todo", "attempts": 0, "seconds": 0.0})


def now_iso() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def checkpoint_steps(workdir: Path) -> list[int]:
  """The complete checkpoints' steps (orbax names each directory by its step)."""
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.is_dir() else []


PROGRESS = re.compile(r"epoch \d+/(\d+) step \d+/(\d+) \|")  # metric_writers.Progress


def total_steps(log: Path) -> int | None:
  """Epochs x steps per epoch, from the last progress line main.py logged."""
  found = PROGRESS.findall(log.read_text(errors="replace")) if log.exists() else []
  return int(found[-1][0]) * int(found[-1][1]) if found else None


def dir_bytes(out: Path) -> int:
  return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def git_commit() -> str | None:
  try:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip() or None
  except (OSError, subprocess.CalledProcessError):
    return None


# ------------------------------------------------------------------- locks


def this_process() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "start": workdir_lock.process_start_time(os.getpid()), "started": time.time()}


def alive_here(record: dict | None) -> bool:
  """Whether `record`'s process runs on this host. A lock from another host
  was carried in with DIR: its process is on a machine we no longer have."""
  return bool(record) and record.get("host") == socket.gethostname() and \
      workdir_lock.holder_alive(record, time.time(), socket.gethostname())


def take_kit_lock(out: Path) -> Path:
  """DIR/kit.lock: one kit per DIR (a stale one is taken over)."""
  path = out / KIT_LOCK
  record = workdir_lock.read(path) if path.exists() else None
  if alive_here(record):
    raise UserError(f"{out} is in use by the kit {workdir_lock.describe(record)}; wait for it "
                    "or stop it")
  path.unlink(missing_ok=True)
  try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:  # another kit took it just now
    raise UserError(f"{out} is in use by another kit; wait for it or stop it") from None
  with os.fdopen(fd, "w") as f:
    f.write(json.dumps(this_process()))
  return path


def free_trainer_lock(workdir: Path, wait_s: float) -> None:
  """A trainer.lock left by an earlier call: its process, if it still runs
  here (the child of a killed kit, saving its checkpoint), gets `wait_s` to
  finish; one from another host came with DIR and is removed."""
  path = workdir / workdir_lock.LOCK_NAME
  give_up = time.monotonic() + wait_s
  while alive_here(record := workdir_lock.read(path) if path.exists() else None):
    if time.monotonic() > give_up:
      raise UserError(f"{workdir} is in use by the trainer {workdir_lock.describe(record)}; "
                      "wait for it or stop it")
    time.sleep(1)
  if record and record.get("host") != socket.gethostname():
    path.unlink(missing_ok=True)


# ---------------------------------------------------------------- hardware


def hardware() -> dict:
  """This machine: run.py's (CPU, JAX backend and devices, versions, torch
  and its CUDA device), the host name and the time."""
  return {**bench.machine(), "host": socket.gethostname(), "date": now_iso()}


def hardware_label(m: dict) -> str:
  """`1x NVIDIA H100 80GB HBM3`, or the CPU for a CPU backend."""
  if m["backend"] == "cpu":
    return f"{m['cpu']} ({m['cores']} cores)"
  return f"{len(m['devices'])}x {m['devices'][0]}"


def boot_key() -> str:
  """This host's name and boot: a fresh box is a new key."""
  boot = Path("/proc/sys/kernel/random/boot_id")
  return socket.gethostname() + ":" + (boot.read_text().strip() if boot.exists() else "")


# ------------------------------------------------------------------ a call


class Call:
  """One invocation: the queue, DIR's state, the budget's clock."""

  def __init__(self, args: argparse.Namespace, out: Path, queue: list[dict]):
    self.args, self.out, self.queue = args, out, queue
    self.budget_s = args.budget_seconds or 60 * args.budget_minutes
    self.deadline = time.monotonic() + self.budget_s
    self.state = load_state(out, args.queue)
    self.state["calls"] += 1
    self.results_dir = Path(args.results_dir)

  def left(self) -> float:
    return self.deadline - time.monotonic()

  def save(self) -> None:
    write_json(self.out / STATE, self.state)

  def log(self, name: str) -> Path:
    (self.out / "logs").mkdir(exist_ok=True)
    return self.out / "logs" / f"{name}.log"

  def machine(self) -> dict:
    """This machine's hardware, probed once per boot (a child process: the
    kit itself never imports JAX, which would hold the GPU)."""
    key = boot_key()
    if key not in self.state["machines"]:
      probe = subprocess.run([sys.executable, __file__, "hardware"], capture_output=True,
                             text=True, cwd=ROOT, timeout=300)
      if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise UserError(f"JAX does not start here ({last}); install the jax of this "
                        "accelerator (see the top of tools/accelerator_kit.py)")
      self.state["machines"][key] = json.loads(probe.stdout.strip().splitlines()[-1])
    return self.state["machines"][key]

  def begin(self, piece: dict, ps: dict) -> Path:
    """Counts the attempt before it starts, so a killed call still counts it."""
    ps["attempts"] += 1
    ps["running"] = {"since": now_iso(), **this_process()}
    self.save()
    log = self.log(piece["name"])
    with open(log, "a", encoding="utf-8") as f:
      f.write(f"=== attempt {ps['attempts']}, {now_iso()} on {socket.gethostname()}, "
              f"{self.left():.0f} s of budget left ===\n")
    return log

  def end(self, ps: dict, seconds: float) -> None:
    ps["seconds"] = round(ps["seconds"] + seconds, 1)
    ps.pop("running", None)
    self.save()


def say(text: str) -> None:
  print(text, flush=True)


class PieceFailed(Exception):
  """A piece failed in a way a rerun may not fix (exit status 1)."""


# -------------------------------------------------------- (a) throughput


def throughput_need(call: Call, piece: dict, ps: dict) -> float:
  return ps.get("need_s", piece["estimate_s"])


def run_throughput(call: Call, piece: dict, ps: dict) -> bool:
  """A child process measures the grid and writes results/NAME.json."""
  result = call.out / "results" / f"{piece['name']}.json"
  return run_measurement(call, piece, ps, [
      sys.executable, __file__, "throughput", "--piece", json.dumps(piece), "--json",
      str(result)], result, ("dtype", "batch_size", "jax_images_per_s", "torch_images_per_s",
                             "jax_vs_torch", "torch"), describe_row)


def run_sweep(call: Call, piece: dict, ps: dict) -> bool:
  """benchmarks/seed_sweep.py in a child process, writing results/NAME.json."""
  result = call.out / "results" / f"{piece['name']}.json"
  return run_measurement(call, piece, ps, [
      sys.executable, str(ROOT / "benchmarks" / "seed_sweep.py"), "--model", piece["registered"],
      "--seeds", ",".join(map(str, piece["seeds"])), "--batch-size", str(piece["batch_size"]),
      "--steps", str(piece["steps"]), "--rounds", str(piece["rounds"]), "--json", str(result)],
      result, ("seeds", "batch_size", "one_seed_images_per_s", "stacked_images_per_s",
               "stacked_per_seed_images_per_s", "stacked_vs_sequential"), describe_sweep_row)


def run_measurement(call: Call, piece: dict, ps: dict, command: list[str], result: Path,
                    kept: tuple[str, ...], describe: Callable[[dict], str]) -> bool:
  """A measuring child (`command` writes `result`, JSON with "rows"); killed at
  the budget's end, the piece is redone next time with a larger estimate."""
  log = call.begin(piece, ps)
  start = time.monotonic()
  env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # leave PyTorch its share
  code, _ = bench.supervise(command, log, kill_at=call.deadline - RESERVE_S, cwd=ROOT, env=env)
  spent = time.monotonic() - start
  call.end(ps, spent)
  if code == 0 and result.exists():
    rows = json.loads(result.read_text())["rows"]
    ps.update(status="done", result=str(result.relative_to(call.out)),
              rows=[{k: r[k] for k in kept} for r in rows])
    call.save()
    say(f"{piece['name']}: done in {spent:.0f} s; " + "; ".join(map(describe, rows)))
    return True
  if code == -signal.SIGKILL and time.monotonic() >= call.deadline - RESERVE_S:
    ps["need_s"] = round(1.5 * max(throughput_need(call, piece, ps), spent))
    call.save()
    say(f"{piece['name']}: stopped by the budget after {spent:.0f} s; redone next call "
        f"(estimate now {ps['need_s']} s)")
    return False
  raise PieceFailed(f"{piece['name']} failed (exit status {code}); see {log}")


def describe_sweep_row(r: dict) -> str:
  return (f"{r['seeds']} seeds b{r['batch_size']}: {r['stacked_images_per_s']:.0f} img/s in all, "
          f"{r['stacked_per_seed_images_per_s']:.0f} per seed; one alone "
          f"{r['one_seed_images_per_s']:.0f} ({r['stacked_vs_sequential']:.2f}x sequential)")


def describe_row(r: dict) -> str:
  torch = (f"PyTorch {r['torch_images_per_s']:.0f}, {r['jax_vs_torch']:.2f}x"
           if r["torch_images_per_s"] else f"PyTorch: {r['torch']}")
  return f"{r['dtype']} b{r['batch_size']} JAX {r['jax_images_per_s']:.0f} img/s ({torch})"


def calibrated_steps(images_per_s: Callable[[int], float], batch_size: int,
                     seconds: float) -> int:
  """Steps that take about `seconds`: a GPU step lasts milliseconds, and a
  timing that short measures the clock and the dispatch, not the step."""
  steps = 2
  while True:
    rate = images_per_s(steps)
    if steps * batch_size / rate >= seconds / 4 or steps >= 4096:
      return max(1, round(seconds * rate / batch_size))
    steps *= 4


TORCH_DIED = "failed: the PyTorch worker died (its error is in the log)"


def measure_pair(piece: dict, batch_size: int, dtype: str, worker: bench.TorchWorker | None,
                 no_torch: str | None) -> dict:
  """JAX against PyTorch at one (batch, dtype): alternating rounds, medians.
  A PyTorch failure (out of memory, say) leaves its column empty, not the row;
  `no_torch` says why there is no worker."""
  stepper = bench.JaxStepper(piece["registered"], dtype, batch_size, {})
  jax_steps = piece["steps"] or calibrated_steps(stepper.images_per_s, batch_size,
                                                 piece["seconds"])
  timers = {"jax": lambda: stepper.images_per_s(jax_steps)}
  torch_steps, torch_note = None, no_torch or "ok"

  def torch_rate(steps: int) -> float:
    return worker.images_per_s(piece["model"], batch_size, steps, dtype)

  try:
    if worker:
      torch_steps = piece["steps"] or calibrated_steps(torch_rate, batch_size, piece["seconds"])
      timers["torch"] = lambda: torch_rate(torch_steps)
    samples = bench.alternate(timers, piece["repeats"])
  except (RuntimeError, OSError):  # the worker died: its end of the pipe is gone
    torch_note, timers = TORCH_DIED, {"jax": timers["jax"]}
    samples = bench.alternate(timers, piece["repeats"])
  jax_median = statistics.median(samples["jax"])
  torch_median = statistics.median(samples["torch"]) if "torch" in samples else None
  return {"model": piece["model"], "registered_name": piece["registered"], "dtype": dtype,
          "batch_size": batch_size, "jax_images_per_s": round(jax_median, 1),
          "jax_samples": [round(s, 1) for s in samples["jax"]], "jax_steps": jax_steps,
          "jax_compile_s": round(stepper.compile_s, 2),
          "torch_images_per_s": None if torch_median is None else round(torch_median, 1),
          "torch_samples": [round(s, 1) for s in samples.get("torch", [])],
          "torch_steps": torch_steps, "torch": torch_note,
          "jax_vs_torch": None if torch_median is None else round(jax_median / torch_median, 3)}


def why_no_torch(machine: dict) -> str | None:
  """None when PyTorch can run beside JAX on the same kind of device."""
  if importlib.util.find_spec("torch") is None:
    return "no torch"
  if machine["backend"] != "cpu" and not machine["torch_device"]:
    return f"no torch on {machine['backend']} (torch sees no CUDA device)"
  return None


def measure_throughput(piece: dict) -> dict:
  """The `throughput` command: one piece's grid, in this (child) process."""
  machine = hardware()
  no_torch = why_no_torch(machine)
  worker, rows = None, []
  try:
    for batch_size in piece["batch_sizes"]:
      for dtype in piece["dtypes"]:
        if not no_torch and (worker is None or worker.proc.poll() is not None):
          worker = bench.TorchWorker()  # a fresh one after a failure
        rows.append(measure_pair(piece, batch_size, dtype, worker, no_torch))
  finally:
    if worker and worker.proc.poll() is None:
      worker.close()
  return {"piece": piece["name"], "date": now_iso(), "machine": machine,
          "command": " ".join(sys.argv), "repeats": piece["repeats"], "rows": rows}


# ---------------------------------------------------------- (b) speedrun


def speedrun_need(call: Call, piece: dict, ps: dict) -> float:
  """A fresh seed starts only when it fits whole (a resumed run loses the
  interrupted epoch's seconds from its timing): as long as the longest seed
  so far, else the table's estimate. A resumed one needs a training piece."""
  taken = [p["seconds"] for q in call.queue if q["kind"] == "speedrun"
           and (p := call.state["pieces"].get(q["name"], {})).get("status") == "done"
           and p["attempts"] == 1]
  estimate = 1.2 * max(taken) if taken else piece["estimate_s"]
  if ps["attempts"] or estimate + RESERVE_S > call.budget_s:
    return train_need(call, piece, ps)
  return estimate


def run_speedrun(call: Call, piece: dict, ps: dict) -> bool:
  workdir = call.out / "runs" / piece["name"]
  free_trainer_lock(workdir, call.args.margin_seconds)
  machine = call.machine()
  log = call.begin(piece, ps)
  start = time.monotonic()
  try:
    run = speedrun.one_run(piece["seed"], piece["overrides"], piece["target"], workdir,
                           piece["config"], log=log, **deadlines(call))
  except bench.Stopped as e:
    return stopped(call, piece, ps, e, workdir, log)
  except bench.MainFailed as e:
    failed(call, ps, e, log, time.monotonic() - start)
  call.end(ps, time.monotonic() - start)
  run["pieces"] = ps["attempts"]
  write_json(call.out / "results" / f"{piece['name']}.json",
             {"date": now_iso(), "machine": machine, "config": piece["config"],
              "target": piece["target"], "overrides": piece["overrides"], "run": run})
  ps.update(status="done", result=f"results/{piece['name']}.json", run=run)
  call.save()
  shutil.rmtree(workdir / "checkpoints", ignore_errors=True)  # its numbers are in results/
  write_speedrun_table(call)
  reached = (f"time to {piece['target']:.0%}: {run['time_to_target_s']:.1f} s"
             if run["time_to_target_s"] is not None else f"{piece['target']:.0%} not reached")
  say(f"{piece['name']}: done in {time.monotonic() - start:.0f} s: test accuracy "
      f"{100 * run['test_accuracy']:.2f}%, {run['train_time_s']:.1f} s of training, {reached}"
      + (f" (over {ps['attempts']} pieces: the interrupted epochs' seconds are missing)"
         if ps["attempts"] > 1 else ""))
  return True


def write_speedrun_table(call: Call) -> None:
  """results/speedrun.json in speedrun.py's format, from the seeds done so far."""
  done = [p for p in call.queue if p["kind"] == "speedrun"
          and call.state["pieces"].get(p["name"], {}).get("status") == "done"]
  saved = [json.loads((call.out / "results" / f"{p['name']}.json").read_text()) for p in done]
  write_json(call.out / "results" / "speedrun.json",
             {"date": saved[-1]["date"][:10], "machine": saved[0]["machine"],
              "target": saved[0]["target"], "overrides": saved[0]["overrides"],
              "config": saved[0]["config"], "runs": [s["run"] for s in saved]})


# -------------------------------------------------------- (c) paper rows


def train_need(call: Call, piece: dict, ps: dict) -> float:
  if ps["status"] == "trained":  # only the record is left
    return ps.get("record_need_s", RECORD_S)
  return call.args.margin_seconds + call.args.min_piece_seconds


def deadlines(call: Call) -> dict:
  """SIGTERM `margin` before the budget's end, SIGKILL just before it."""
  return {"stop_at": call.deadline - call.args.margin_seconds,
          "kill_at": call.deadline - RESERVE_S}


def stopped(call: Call, piece: dict, ps: dict, e: bench.Stopped, workdir: Path,
            log: Path) -> bool:
  """Bookkeeping of a training child the budget stopped: where it got to."""
  steps = checkpoint_steps(workdir)
  ps.update(status="partial", step=steps[-1] if steps else 0)
  ps["total_steps"] = total_steps(log) or ps.get("total_steps")
  call.end(ps, e.wall)
  how = "killed" if e.returncode == -signal.SIGKILL else "stopped"
  say(f"{piece['name']}: {how} by the budget at step {ps['step']}"
      + (f" of {ps['total_steps']}" if ps.get("total_steps") else "")
      + f" (piece {ps['attempts']}, {e.wall:.0f} s); the next call resumes it")
  return False


def failed(call: Call, ps: dict, e: bench.MainFailed, log: Path, seconds: float) -> None:
  call.end(ps, seconds)
  ps["last_error"] = str(e)
  call.save()
  if e.returncode == 2 and e.message:  # main.py's one-line error: the user can fix it
    raise UserError(f"{e.message} (log: {log})")
  raise PieceFailed(f"{e}; see {log}")


def run_training(call: Call, piece: dict, ps: dict) -> bool:
  workdir = call.out / "runs" / piece["name"]
  if ps["status"] != "trained":
    free_trainer_lock(workdir, call.args.margin_seconds)
    ps.setdefault("command", shlex.join(["python", "main.py", f"--config={piece['config']}",
                                         f"--workdir=runs/{piece['name']}",
                                         *piece["overrides"]]))
    commit, label = git_commit(), hardware_label(call.machine())
    ps["commits"] = list(dict.fromkeys([*ps.get("commits", []), *([commit] if commit else [])]))
    ps["hardware"] = list(dict.fromkeys([*ps.get("hardware", []), label]))
    log = call.begin(piece, ps)
    start = time.monotonic()
    try:
      results, wall, _ = bench.run_main(piece["config"], piece["overrides"], workdir, log=log,
                                        **deadlines(call))
    except bench.Stopped as e:
      return stopped(call, piece, ps, e, workdir, log)
    except bench.MainFailed as e:
      failed(call, ps, e, log, time.monotonic() - start)
    ps.update(status="trained", step=results["steps"], total_steps=results["steps"],
              test_accuracy=results["test_accuracy"])
    call.end(ps, wall)
    say(f"{piece['name']}: trained (piece {ps['attempts']}): test accuracy "
        f"{100 * results['test_accuracy']:.2f}% at step {results['steps']}")
    if call.left() < train_need(call, piece, ps) + RESERVE_S:
      say(f"{piece['name']}: recorded next call (too little budget left)")
      return False
  return record_row(call, piece, ps, workdir)


def record_row(call: Call, piece: dict, ps: dict, workdir: Path) -> bool:
  """results_table record, numbers only when the weights cannot be shipped
  (too large for git, as VGG-16's; or no safetensors on this image)."""
  command = [sys.executable, "-m", "cnn.report.results_table", "record", str(workdir),
             "--name", piece["name"], "--hardware", " + ".join(ps["hardware"]),
             "--command", ps["command"], "--resumes", str(ps["attempts"] - 1),
             "--results-dir", str(call.results_dir)]
  if ps.get("commits"):
    command += ["--commit", ",".join(ps["commits"])]
  start = time.monotonic()
  done = record(command, call.log(piece["name"]), call.deadline - RESERVE_S)
  no_weights = None
  if done.returncode:
    no_weights = last_line(done.stderr)
    done = record([*command, "--no-weights"], call.log(piece["name"]), call.deadline - RESERVE_S)
  ps["record_need_s"] = round(1.5 * (time.monotonic() - start))
  if done.returncode:
    call.save()
    raise PieceFailed(f"recording {piece['name']} failed: {last_line(done.stderr)}")
  ps.update(status="done", record=done.stdout.strip().splitlines()[-1], no_weights=no_weights)
  call.save()
  say(f"{piece['name']}: recorded {ps['record']}"
      + (f" without its weights ({no_weights})" if no_weights else ""))
  return True


def last_line(text: str) -> str:
  return (text.strip().splitlines() or ["?"])[-1]


def record(command: list[str], log: Path, kill_at: float) -> subprocess.CompletedProcess:
  try:
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          timeout=max(kill_at - time.monotonic(), 1))
  except subprocess.TimeoutExpired as e:
    raise PieceFailed(f"recording took over the budget: {shlex.join(command)}") from e
  with open(log, "a", encoding="utf-8") as f:
    f.write(done.stdout + done.stderr)
  return done


def recorded(call: Call, ps: dict) -> bool:
  """A row counts as done where its record is in this call's results dir."""
  return ps.get("status") == "done" and (call.results_dir / Path(ps["record"]).name).exists()


# ------------------------------------------------------------- the queue

# kind -> (seconds it needs before it may start, runner: True when the piece finished)
KINDS: dict[str, tuple[Callable, Callable]] = {
    "throughput": (throughput_need, run_throughput),
    "sweep": (throughput_need, run_sweep),
    "speedrun": (speedrun_need, run_speedrun),
    "train": (train_need, run_training),
}


def is_done(call: Call, piece: dict) -> bool:
  ps = call.state["pieces"].get(piece["name"], {})
  if piece["kind"] == "train" and ps.get("status") == "done" and not recorded(call, ps):
    ps["status"] = "trained"  # recorded into another results dir: record it here too
  return ps.get("status") == "done"


def selected(piece: dict, only: list[str]) -> bool:
  return not only or piece["name"] in only or piece["kind"] in only


def run_queue(call: Call) -> int:
  for piece in call.queue:
    ps = piece_state(call.state, piece["name"])
    if ps.pop("running", None):
      say(f"{piece['name']}: the last call ended during this piece; it continues")
    if is_done(call, piece) or not selected(piece, call.args.only):
      continue
    need, runner = KINDS[piece["kind"]]
    seconds = need(call, piece, ps) + RESERVE_S
    if seconds > call.budget_s:
      raise UserError(f"{piece['name']} needs about {seconds:.0f} s, more than the whole "
                      f"budget of {call.budget_s:.0f} s; raise --budget-minutes")
    if seconds > call.left():
      say(f"{piece['name']}: left for the next call (needs about {seconds:.0f} s, "
          f"{call.left():.0f} s left)")
      break
    if not runner(call, piece, ps):
      break
  call.save()
  return 0


def describe_next(call: Call) -> str:
  piece = next((p for p in call.queue if not is_done(call, p)), None)
  if piece is None:
    return "nothing, the queue is done"
  ps = call.state["pieces"].get(piece["name"], {})
  if ps.get("status") == "trained":
    return f"{piece['name']} (trained; to record)"
  if ps.get("status") == "partial":
    total = f" of {ps['total_steps']}" if ps.get("total_steps") else ""
    return f"{piece['name']} at step {ps['step']}{total}"
  return piece["name"]


def summary(call: Call) -> str:
  done = sum(is_done(call, p) for p in call.queue)
  size = dir_bytes(call.out) / MIB
  advice = " (over one transfer: carry it with `pack`)" if size > call.args.part_mib else ""
  return (f"queue {call.args.queue}: {done}/{len(call.queue)} pieces done; next: "
          f"{describe_next(call)}; DIR {size:.1f} MiB{advice}")


def render_docs(call: Call) -> None:
  """--readme: the results table from --results-dir; --speedrun-doc: the
  speedrun block from DIR (the two live in different files)."""
  if call.args.readme and any(p["kind"] == "train" and is_done(call, p) for p in call.queue):
    results_table.rewrite_readme(call.args.readme, results_table.render(call.results_dir))
  seeds = [p for p in call.queue if p["kind"] == "speedrun"]
  if call.args.speedrun_doc and seeds and all(is_done(call, p) for p in seeds):
    table = speedrun.render(json.loads((call.out / "results" / "speedrun.json").read_text()))
    results_table.rewrite_readme(call.args.speedrun_doc, table, speedrun.BEGIN, speedrun.END)


def prepare_dir(out: Path) -> None:
  try:
    (out / "results").mkdir(parents=True, exist_ok=True)
    probe = out / ".write_test"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise UserError(f"--out {out} is not writable ({e.strerror or e}); choose another --out") \
        from None


def check_only(only: list[str], queue: list[dict]) -> None:
  valid = {p["name"] for p in queue} | {p["kind"] for p in queue}
  unknown = [o for o in only if o not in valid]
  if unknown:
    raise UserError(f"unknown piece {unknown[0]!r} for --only; valid: {', '.join(sorted(valid))}")


def command_run(args: argparse.Namespace) -> int:
  if args.queue not in QUEUES:
    raise UserError(f"unknown queue {args.queue!r}; valid queues: {', '.join(QUEUES)}")
  queue = QUEUES[args.queue]()
  check_only(args.only, queue)
  out = args.out.resolve()
  prepare_dir(out)
  lock = take_kit_lock(out)
  signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: children save
  call = Call(args, out, queue)
  try:
    code = run_queue(call)
    render_docs(call)
  except KeyboardInterrupt:
    say("stopped by a signal; the next call continues")
    code = 1
  except PieceFailed as e:
    say(f"error: {e}")
    code = 1
  finally:
    call.save()
    say(summary(call))
    lock.unlink(missing_ok=True)
  return code


# ------------------------------------------------------- pack and unpack


def skipped_when_packing(name: str) -> bool:
  """Locks and half-written files stay behind (carry.py also drops
  unfinished checkpoints)."""
  return name in (KIT_LOCK, workdir_lock.LOCK_NAME) or name.endswith(".tmp")


def parts_dir_for(out: Path, given: Path | None) -> Path:
  return given or carry.default_parts_dir(out)


def command_pack(args: argparse.Namespace) -> int:
  out = args.out.resolve()
  if not (out / STATE).exists():
    raise UserError(f"{out} has no {STATE}: nothing to pack (is --out the kit's DIR?)")
  lock = out / KIT_LOCK
  if alive_here(record := workdir_lock.read(lock) if lock.exists() else None):
    raise UserError(f"{out} is in use by the kit {workdir_lock.describe(record)}; pack it "
                    "after that call ends")
  parts_dir = parts_dir_for(out, args.parts)
  manifest = carry.pack(out, parts_dir, int(args.part_mib * MIB), skipped_when_packing)
  say(f"packed {manifest['files']} files of {out} into {len(manifest['parts'])} parts of at most "
      f"{args.part_mib:g} MiB in {parts_dir} ({out.name}.tar.000 ...; {out.name}.pack.json "
      "lists them): copy them all, then `unpack`")
  return 0


def command_unpack(args: argparse.Namespace) -> int:
  out = args.out.resolve()
  manifest = carry.unpack(args.parts.resolve(), out, args.replace)
  say(f"unpacked {manifest['files']} files ({manifest['bytes'] / MIB:.1f} MiB) into {out}")
  return 0


# ------------------------------------------------------------ record


def command_record(args: argparse.Namespace) -> int:
  """The finished rows recorded into --results-dir, nothing trained (at home)."""
  out = args.out.resolve()
  if not (out / STATE).exists():
    raise UserError(f"{out} has no {STATE}: is --out the kit's DIR?")
  queue = json.loads((out / STATE).read_text())["queue"]
  lock = take_kit_lock(out)
  call = Call(argparse.Namespace(queue=queue, budget_seconds=3600, results_dir=args.results_dir,
                                 part_mib=48.0), out, QUEUES[queue]())
  try:
    for piece in call.queue:
      ps = piece_state(call.state, piece["name"])
      if piece["kind"] == "train" and not is_done(call, piece) and ps["status"] == "trained":
        record_row(call, piece, ps, out / "runs" / piece["name"])
  except PieceFailed as e:
    say(f"error: {e}")
    return 1
  finally:
    call.save()
    say(summary(call))
    lock.unlink(missing_ok=True)
  return 0


# ------------------------------------------------------------ report


def command_report(args: argparse.Namespace) -> int:
  """Markdown of DIR's results: the throughput grid and the speedrun."""
  results = args.out / "results"
  rows = [r for path in sorted(results.glob("throughput_*.json"))
          for r in json.loads(path.read_text())["rows"]]
  if rows:
    say("| model | dtype | batch | JAX images/s | PyTorch images/s | JAX / PyTorch "
        "| JAX compile s |")
    say("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
      torch = f"{r['torch_images_per_s']:.0f}" if r["torch_images_per_s"] else r["torch"]
      ratio = f"{r['jax_vs_torch']:.2f}x" if r["jax_vs_torch"] else ""
      say(f"| {r['model']} | {r['dtype']} | {r['batch_size']} | {r['jax_images_per_s']:.0f} | "
          f"{torch} | {ratio} | {r['jax_compile_s']} |")
  for path in sorted(results.glob("sweep_*.json")):
    sweep = json.loads(path.read_text())
    say("\n" + seed_sweep.render(sweep["rows"], sweep["machine"]))
  if (results / "speedrun.json").exists():
    say("\n" + speedrun.render(json.loads((results / "speedrun.json").read_text())))
  return 0


# ------------------------------------------------------- child commands


def command_throughput(args: argparse.Namespace) -> int:
  """A throughput piece, in the child process the kit starts."""
  result = measure_throughput(json.loads(args.piece))
  args.json.parent.mkdir(parents=True, exist_ok=True)
  write_json(args.json, result)
  return 0


def command_hardware(args: argparse.Namespace) -> int:
  del args
  print(json.dumps(hardware()))
  return 0


# ------------------------------------------------------------- the CLI


def run_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="tools/accelerator_kit.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", type=Path, required=True, help="DIR: state, results, runs")
  parser.add_argument("--queue", default="full", help=f"one of: {', '.join(QUEUES)}")
  budget = parser.add_mutually_exclusive_group()
  budget.add_argument("--budget-minutes", type=float, default=9.0,
                      help="exit before this much time has passed (default 9)")
  budget.add_argument("--budget-seconds", type=float, default=None, help="the same, in seconds")
  parser.add_argument("--margin-seconds", type=float, default=60.0,
                      help="SIGTERM a training child this long before the budget's end, for "
                      "its checkpoint and exit (default 60)")
  parser.add_argument("--min-piece-seconds", type=float, default=120.0,
                      help="start a training piece only with this much time before its SIGTERM "
                      "(start-up, compile and some steps; default 120)")
  parser.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=[],
                      help="comma-separated pieces or kinds (throughput, sweep, speedrun, train) "
                      "to run "
                      "in this call")
  parser.add_argument("--results-dir", default=str(results_table.RESULTS_DIR),
                      help="where finished rows are recorded (default: results/)")
  parser.add_argument("--readme", type=Path, default=None,
                      help="rewrite this README's results table (README.md)")
  parser.add_argument("--speedrun-doc", type=Path, default=None,
                      help="rewrite this file's speedrun block (docs/experiments.md)")
  parser.add_argument("--part-mib", type=float, default=48.0,
                      help="one transfer's size, for the summary's advice (default 48)")
  return parser


def pack_parser(command: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=f"tools/accelerator_kit.py {command}",
      description="DIR as parts of at most --part-mib MiB (one tar stream cut in pieces, "
      "SHA-256s in DIR.pack.json), without locks or unfinished checkpoints" if command == "pack"
      else "the parts back into DIR, after checking every part against the manifest")
  parser.add_argument("--out", type=Path, required=True, help="the kit's DIR")
  parser.add_argument("--parts", type=Path, default=None,
                      help="folder of the parts (default: DIR-parts beside DIR)")
  if command == "pack":
    parser.add_argument("--part-mib", type=float, default=48.0, help="largest part (default 48)")
  else:
    parser.add_argument("--replace", action="store_true", help="replace a non-empty DIR")
  return parser


def report_parser(command: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f"tools/accelerator_kit.py {command}")
  parser.add_argument("--out", type=Path, required=True, help="the kit's DIR")
  if command == "record":
    parser.add_argument("--results-dir", default=str(results_table.RESULTS_DIR),
                        help="where to record the finished rows (default: results/)")
  return parser


def throughput_parser(_: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="tools/accelerator_kit.py throughput")
  parser.add_argument("--piece", required=True, help="the piece, as JSON")
  parser.add_argument("--json", type=Path, required=True, help="write the result here")
  return parser


def hardware_parser(_: str) -> argparse.ArgumentParser:
  return argparse.ArgumentParser(prog="tools/accelerator_kit.py hardware")


# name -> (parser, command); no name: "run"
COMMANDS = {"run": (lambda _: run_parser(), command_run),
            "pack": (pack_parser, command_pack), "unpack": (pack_parser, command_unpack),
            "report": (report_parser, command_report), "record": (report_parser, command_record),
            "throughput": (throughput_parser, command_throughput),
            "hardware": (hardware_parser, command_hardware)}


def main(argv: list[str]) -> int:
  name = argv[0] if argv and argv[0] in COMMANDS else "run"
  parser, command = COMMANDS[name]
  args = parser(name).parse_args(argv[1:] if argv and argv[0] == name else argv)
  if name == "unpack" and args.parts is None:
    args.parts = parts_dir_for(args.out.resolve(), None)
  try:
    return command(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
