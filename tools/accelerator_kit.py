"""One visit of the borrowed GPU box, as the device tool runs it (issue #46).

The box is reached through short commands: each runs at most 10 minutes,
carries at most 64 MiB to the box (the working tree included) and brings back
at most 8 files of 16 MiB from $OUT; the box keeps its disk only ~30 s after a
command; its python3 has JAX with CUDA but no TensorFlow, tfds,
ml_collections or dm-pix. A visit is therefore a fixed sequence of commands,
printed here and fired back to back:

  python tools/accelerator_kit.py prepare      # here: .box/ = wheels + CIFAR-10 in parts (+ a resume)
  python tools/accelerator_kit.py visit        # here: the commands, each with the paths it carries
  python tools/accelerator_kit.py land DIR     # here, after: DIR = the files the main command returned

  1. `first`: installs the wheels, adds data part 1, prints the box
     (nvidia-smi, versions, devices) and trains a ResNet-20 for a few steps
     (`smoke`, about 30 s).
  2. `part K`: one more data part (only when the data needs more than two).
  3. `resume K`: a row's checkpoint that the last visit returned (if any).
  4. `main`: the last data part; every part checked against the official
     checksums (tools/box_data.py); then `main`, a time-boxed queue that
     ends 570 s after the command started: (i) train-step throughput
     (models x dtypes x 1 or 5 seeds vmapped, with and without
     gpu_deterministic_ops, the PyTorch twin beside), then (ii) the paper rows
     as seed sweeps of as many seeds as fit. After every piece it rewrites
     $OUT/visit.json and $OUT/back.tar.NNN (records, weights, a stopped row's
     checkpoint), so a command cut short still returns what finished.

`--size cpu` gives the same visit at CPU size (tools/box_rehearsal.py runs it
here against the limits). docs/accelerators.md explains each step.
"""
import argparse
import dataclasses
import datetime
import hashlib
import json
import os
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script

from benchmarks import run as bench  # noqa: E402
from cnn.errors import UserError  # noqa: E402
from tools import box_airbench, carry  # noqa: E402

MIB = 2**20
BOX = Path(".box")  # here, ignored by git: what the visit carries
WHEELS = BOX / "wheels"
DATA = BOX / "data"
RESUME = BOX / "resume"
SCRATCH = "/tmp/cnnbox"  # on the box, outside the checkout: site, parts, data, runs, records
SPEEDS = ROOT / "tools" / "box_speeds.json"  # train-step speeds measured on the box, by visit


@dataclasses.dataclass(frozen=True)
class Limits:
  """The device tool's limits (/work/.library/device/README.md)."""
  command_chars: int = 2000
  command_s: int = 600
  send_bytes: int = 64 * MIB
  carry_paths: int = 8
  back_files: int = 8
  back_file_bytes: int = 16 * MIB
  back_bytes: int = 64 * MIB


LIMITS = Limits()
VISIT_JSON, MAIN_LOG, BACK = "visit.json", "main.log", "back"
PUBLISHED = "published"  # under back/records/: weights over git's limit (results_table record)
BACK_RESERVE = 2 * MIB  # visit.json and main.log, beside back.tar.NNN

# ------------------------------------------------------------------ the queue


@dataclasses.dataclass(frozen=True)
class Cell:
  """One train-step timing: a model, a dtype, N seeds vmapped, XLA's
  deterministic GPU ops on or off (a flag fixed when JAX starts)."""
  model: str  # the PyTorch twin's name
  registered: str
  dtype: str
  seeds: int
  deterministic: bool

  @property
  def key(self) -> str:
    return (f"{self.registered}/{self.dtype}/seeds{self.seeds}/"
            f"{'det' if self.deterministic else 'nondet'}")


@dataclasses.dataclass(frozen=True)
class Row:
  """A paper row trained as a seed sweep."""
  name: str
  config: str
  overrides: tuple[str, ...]
  registered: str  # its model, for the speed of a cell
  checkpoint_mib_per_seed: float  # params + momentum: what a stopped row returns


@dataclasses.dataclass(frozen=True)
class Size:
  batch_size: int
  cells: tuple[Cell, ...]  # in priority order: what the row estimates need first
  throughput_s: float
  timing_s: float  # one timing lasts about this long
  rounds: int
  rows: tuple[Row, ...]
  seed_choices: tuple[int, ...]  # the most seeds that fit, from the first
  margin_s: float  # SIGTERM a row this long before the end: its checkpoint, the return
  min_row_s: float  # a row that does not fit whole starts only with this much left
  overhead: float  # main.py's seconds per step over the bare step's (measured at CPU size)
  startup_s: float  # a row's start: imports, data to the device, compiles
  main_s: int  # the main command's queue ends this long after the command starts
  # After the rows: `python -m cnn.speedrun` (these arguments), up to this many seeds,
  # started only with this much time left (it writes its JSON after every seed).
  speedrun: tuple[str, ...] = ()
  speedrun_seeds: int = 0
  speedrun_min_s: float = 0


# Saves only at a row's end and at SIGTERM (checkpoint.every_epochs=0): each
# save drains the GPU's queue, and the box's epochs take about a second.
BOX_RUN = ("--config.data.on_device=True", "--config.data.source=archives",
           "--config.checkpoint.keep=1", "--config.checkpoint.every_epochs=0",
           "--config.sweep.placement=vmap")
PAPER_SPLITS = ("--config.protocol=paper", "--config.data.train_split=train",
                "--config.data.validation_split=")


def box_size() -> Size:
  det = [Cell("resnet56", "resnet56_v1", "float32", n, True) for n in (1, 5)]
  det += [Cell("vgg16", "vgg16", "float32", n, True) for n in (1, 5)]
  rest = [Cell(m, r, d, 1, False) for m, r in (("resnet20", "resnet20_v1"),
                                               ("resnet56", "resnet56_v1"), ("vgg16", "vgg16"))
          for d in ("float32", "bfloat16")]
  rest += [Cell("resnet20", "resnet20_v1", "float32", 5, False),
           Cell("resnet20", "resnet20_v1", "float32", 1, True)]
  return Size(
      batch_size=128, cells=(*det, *rest), throughput_s=90, timing_s=0.5, rounds=3,
      rows=(Row("resnet56v1_cifar10", "configs/resnet56v1_cifar10.py", BOX_RUN, "resnet56_v1", 7),
            Row("resnet56v2_cifar10", "configs/resnet56v2_cifar10.py", BOX_RUN, "resnet56_v1", 7),
            Row("vgg16_cifar10", "configs/vgg16_cifar10.py", (*BOX_RUN, *PAPER_SPLITS), "vgg16",
                115),
            # He et al.'s table (cnn/report/he2016.py), then the one-seed CPU rows as sweeps.
            # A model without measured cells has no estimate: it runs, stops, returns, resumes.
            Row("resnet110v1_cifar10", "configs/resnet110v1_cifar10.py", BOX_RUN,
                "resnet110_v1", 14),
            Row("resnet20v1_cifar10", "configs/resnet20v1_cifar10.py", BOX_RUN, "resnet20_v1", 2.2),
            Row("resnet20v2_cifar10", "configs/resnet20v2_cifar10.py", BOX_RUN, "resnet20_v1", 2.2),
            Row("resnet32v1_cifar10", "configs/resnet32v1_cifar10.py", BOX_RUN, "resnet32_v1", 3.7),
            Row("resnet44v1_cifar10", "configs/resnet44v1_cifar10.py", BOX_RUN, "resnet44_v1", 5.3),
            Row("resnet110v2_cifar10", "configs/resnet110v2_cifar10.py", BOX_RUN,
                "resnet110_v1", 14),
            Row("resnet164v2_cifar10", "configs/resnet164v2_cifar10.py", BOX_RUN,
                "resnet164_v2", 14)),
      seed_choices=(5, 4, 3), margin_s=45, min_row_s=120, overhead=1.1, startup_s=60,
      main_s=570, speedrun=("--breakdown", "--profile"), speedrun_seeds=25, speedrun_min_s=120)


TINY_ROW = ("--config.num_epochs=1", "--config.data.train_split=train[:1024]",
            "--config.data.validation_split=", "--config.protocol=paper",
            "--config.data.test_split=test[:1000]", "--config.eval.flip=False")


def cpu_size() -> Size:
  """The same visit at CPU size (the rehearsal): a tiny batch, two short rows,
  the second too long for what is left, so it is stopped and returned."""
  return Size(
      batch_size=64, cells=(Cell("resnet8", "resnet8_v1", "float32", 1, True),
                            Cell("resnet8", "resnet8_v1", "float32", 2, True),
                            Cell("resnet20", "resnet20_v1", "float32", 1, False)),
      throughput_s=60, timing_s=0.3, rounds=2,
      rows=(Row("tiny_cifar10", "configs/tiny_cifar10.py", (*BOX_RUN, *TINY_ROW), "resnet8_v1",
                0.2),
            Row("tiny_cifar10_long", "configs/tiny_cifar10.py",
                (*BOX_RUN, *TINY_ROW, "--config.num_epochs=400"), "resnet8_v1", 0.2)),
      seed_choices=(2,), margin_s=40, min_row_s=60, overhead=1.3, startup_s=30, main_s=330,
      speedrun=("--train-images", "1000", "--test-images", "500", "--epochs", "1",
                "--batch-size", "250", "--widths", "8,16,16", "--dtype", "float32",
                "--breakdown", "--profile"),
      speedrun_seeds=2, speedrun_min_s=60)


SIZES: dict[str, Callable[[], Size]] = {"box": box_size, "cpu": cpu_size}
QUEUES = ("rows", "speedrun")

# ------------------------------------------------------------------ helpers


def say(text: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def write_json(path: Path, value) -> None:
  """Atomically: a cut-short command never leaves half a file."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=1, default=str) + "\n")
  os.replace(tmp, path)


def now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def hardware_label(machine: dict) -> str:
  """`1x NVIDIA H200 (jax 0.11.2)`, or the CPU for a CPU backend."""
  where = (f"{machine['cpu']} ({machine['cores']} cores)" if machine["backend"] == "cpu"
           else f"{len(machine['devices'])}x {machine['devices'][0]}")
  return f"{where} (jax {machine['jax']})"


def deterministic_env(on: bool) -> dict:
  """The environment of a JAX child: XLA's deterministic GPU ops set or not
  (main.py sets the flag from the config itself), and no preallocation, so
  the PyTorch twin beside it gets memory."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "deterministic_ops" not in f]
  return {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
          "XLA_FLAGS": " ".join([*flags, *(["--xla_gpu_deterministic_ops=true"] if on else [])])}


# ------------------------------------------------------- (i) the throughput


def calibrated_steps(images_per_s: Callable[[int], float], batch: int, seconds: float) -> int:
  """Steps that take about `seconds`: a GPU step lasts milliseconds, and a
  timing that short measures the clock and the dispatch, not the step."""
  steps = 2
  while True:
    rate = images_per_s(steps)
    if steps * batch / rate >= seconds / 4 or steps >= 4096:
      return max(1, round(seconds * rate / batch))
    steps *= 4


def stepper(cell: Cell, batch_size: int):
  """The real train step of `cell`: benchmarks/run.py's for one seed, the
  vmapped sweep step of benchmarks/seed_sweep.py for several."""
  if cell.seeds == 1:
    return bench.JaxStepper(cell.registered, cell.dtype, batch_size, {})
  from benchmarks import seed_sweep  # pylint: disable=import-outside-toplevel
  return seed_sweep.StackedStepper(cell.registered, cell.seeds, batch_size, cell.dtype)


def measure_cell(cell: Cell, size: Size, worker: "bench.TorchWorker | None") -> dict:
  """JAX (and, for one seed, the PyTorch twin on the same device) in
  alternating rounds; medians. images/s counts the images of all seeds."""
  jax_stepper = stepper(cell, size.batch_size)
  images = size.batch_size * cell.seeds
  jax_steps = calibrated_steps(jax_stepper.images_per_s, images, size.timing_s)
  timers = {"jax": lambda: jax_stepper.images_per_s(jax_steps)}
  note = "no torch" if worker is None else "ok"
  if worker is not None and cell.seeds == 1:
    def torch_rate(steps: int) -> float:
      return worker.images_per_s(cell.model, size.batch_size, steps, cell.dtype)
    try:
      torch_steps = calibrated_steps(torch_rate, size.batch_size, size.timing_s)
      timers["torch"] = lambda: torch_rate(torch_steps)
    except (RuntimeError, OSError) as e:
      note = f"PyTorch failed: {e}"
  samples = bench.alternate(timers, size.rounds)
  jax_median = statistics.median(samples["jax"])
  torch_median = statistics.median(samples["torch"]) if "torch" in samples else None
  return {**dataclasses.asdict(cell), "key": cell.key, "batch_size": size.batch_size,
          "images_per_s": round(jax_median, 1),
          "step_s": images / jax_median, "samples": [round(s, 1) for s in samples["jax"]],
          "steps": jax_steps, "compile_s": round(jax_stepper.compile_s, 2),
          "torch_images_per_s": None if torch_median is None else round(torch_median, 1),
          "jax_vs_torch": None if torch_median is None else round(jax_median / torch_median, 3),
          "torch": note}


def torch_worker(machine: dict) -> "bench.TorchWorker | None":
  """The PyTorch twin on the device JAX uses, when there is one."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("torch") is None:
    return None
  if machine["backend"] != "cpu" and not machine["torch_device"]:
    return None
  return bench.TorchWorker()


def command_cells(args: argparse.Namespace) -> int:
  """A child: times the given cells (all of one determinism setting) until
  --until, rewriting --json after each, so a kill keeps what finished."""
  size, keys = SIZES[args.size](), args.keys.split(",")
  cells = [c for c in size.cells if c.key in keys]
  machine = {**bench.machine(), "host": socket.gethostname(), "date": now_iso()}
  worker = torch_worker(machine) if not cells[0].deterministic else None
  done = {"machine": machine, "rows": [], "not_reached": [c.key for c in cells]}
  try:
    for cell in cells:
      if time.time() >= args.until:
        break
      done["rows"].append(measure_cell(cell, size, worker))
      done["not_reached"].remove(cell.key)
      write_json(args.json, done)
  finally:
    if worker and worker.proc.poll() is None:
      worker.close()
  write_json(args.json, done)
  return 0


# ----------------------------------------------------------- (ii) the rows


def estimate_row_s(row: Row, seeds: int, steps: int, speeds: dict, size: Size) -> float | None:
  """Seconds for `seeds` seeds of `row` from the deterministic fp32 cells of
  its model (the paper configs turn the flag on): the step time of one seed
  and of the largest vmapped count measured, linear in between (a sweep's
  step grows about linearly with its seeds); None when unmeasured."""
  known = {int(k.split("/")[2][5:]): v for k, v in speeds.items()
           if k.startswith(f"{row.registered}/float32/") and k.endswith("/det")}
  if 1 not in known:
    return None
  many = max(known)
  one_s, many_s = known[1], known[many]
  step_s = one_s if many == 1 else one_s + (many_s - one_s) * (seeds - 1) / (many - 1)
  return size.startup_s + steps * step_s * size.overhead


TRAIN_EXAMPLES = {"cifar10": 50_000, "mnist": 60_000}


def row_steps(row: Row) -> int:
  """The row's training steps (whole batches per epoch, as the trainer
  drops the remainder), from its config with the row's overrides."""
  import importlib  # pylint: disable=import-outside-toplevel
  from cnn.datasets import splits  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(row.config[:-3].replace("/", ".")).get_config()
  values = dict(o[len("--config."):].split("=", 1) for o in row.overrides)
  epochs = int(values.get("num_epochs", config.num_epochs))
  train = values.get("data.train_split", config.data.train_split)
  _, part = splits.select(train, {"train": TRAIN_EXAMPLES[config.data.name]})
  examples = len(range(*part.indices(TRAIN_EXAMPLES[config.data.name])))
  return epochs * (examples // config.batch_size)


def row_command(row: Row, seeds: int, workdir: str) -> list[str]:
  return ["python", "main.py", f"--config={row.config}", f"--workdir={workdir}", *row.overrides,
          f"--config.sweep.seeds=0-{seeds - 1}"]


# ------------------------------------------------------------- the return


class Back:
  """What returns: $OUT/visit.json, $OUT/main.log (the tee of this output)
  and $OUT/back.tar.NNN, rewritten after every piece from SCRATCH/back/
  (records/, resume/) within the tool's return limits."""

  def __init__(self, out: Path, scratch: Path):
    self.out, self.root = out, scratch / BACK
    (self.root / "records").mkdir(parents=True, exist_ok=True)
    self.visit: dict = {"started": now_iso(), "pieces": {}, "back": None}

  def budget(self) -> int:
    return min(LIMITS.back_bytes - BACK_RESERVE,
               (LIMITS.back_files - 2) * LIMITS.back_file_bytes)

  def trim_weights(self) -> list[str]:
    """Drops the largest weights until the payload fits; their records say so."""
    dropped = []
    while (total := sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())) \
        > self.budget() * 0.98:
      weights = sorted((self.root / "records").rglob("*.safetensors"),
                       key=lambda f: f.stat().st_size)
      if not weights:
        raise UserError(f"what returns takes {total / MIB:.0f} MiB without weights, over the "
                        f"{self.budget() / MIB:.0f} MiB the tool brings back")
      biggest = weights[-1]
      record = biggest.parent.parent / f"{biggest.stem}.json"
      entry = json.loads(record.read_text())
      entry.pop("weights", None)
      entry.pop("weights_published", None)
      entry["weights_missing"] = ("not returned: over the box's 64 MiB return limit "
                                  f"({biggest.stat().st_size / MIB:.0f} MiB)")
      write_json(record, entry)
      biggest.unlink()
      dropped.append(biggest.name)
    return dropped

  def publish(self) -> None:
    """back.tar.NNN and visit.json, the new parts in place before the old go."""
    dropped = self.trim_weights()
    if dropped:
      self.visit.setdefault("weights_dropped", []).extend(dropped)
    staging = self.out.parent / f".{self.out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    manifest = carry.pack(self.root, staging, LIMITS.back_file_bytes, lambda _: False)
    for old in self.out.glob(f"{BACK}.tar.*"):
      old.unlink()
    for part in manifest["parts"]:
      os.replace(staging / part["file"], self.out / part["file"])
    shutil.rmtree(staging, ignore_errors=True)
    self.visit["back"] = manifest
    self.visit["updated"] = now_iso()
    write_json(self.out / VISIT_JSON, self.visit)


# ------------------------------------------------------------ main, the queue


class Visit:
  """The main command's queue, time-boxed to --until (epoch seconds)."""

  def __init__(self, args: argparse.Namespace):
    self.args, self.size = args, SIZES[args.size]()
    self.scratch, self.out = Path(args.scratch), Path(args.out)
    self.back = Back(self.out, self.scratch)
    self.speeds: dict[str, float] = {}
    self.machine: dict | None = None

  def left(self) -> float:
    return self.args.until - time.time()

  def piece(self, name: str, **fields) -> None:
    self.back.visit["pieces"].setdefault(name, {}).update(fields)
    self.back.publish()

  def throughput(self) -> None:
    """Two children (the determinism flag is fixed when JAX starts): the
    deterministic cells first, which the row estimates use."""
    until = time.time() + min(self.size.throughput_s, max(self.left() - 60, 0))
    logs = self.scratch / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    for deterministic in (True, False):
      cells = [c for c in self.size.cells if c.deterministic == deterministic]
      path = self.scratch / f"cells_{'det' if deterministic else 'nondet'}.json"
      if not cells or time.time() >= until - 5:
        continue
      command = [sys.executable, __file__, "cells", "--size", self.args.size, "--keys",
                 ",".join(c.key for c in cells), "--until", str(until), "--json", str(path)]
      code, _ = bench.supervise(command, logs / "throughput.log", cwd=ROOT,
                                kill_at=time.monotonic() + until + 30 - time.time(),
                                env=deterministic_env(deterministic))
      if path.exists():
        results.append(json.loads(path.read_text()))
      if code:
        say(f"throughput: a child ended with status {code} (see its log below)")
    rows = [r for res in results for r in res["rows"]]
    self.speeds = {r["key"]: r["step_s"] for r in rows}
    self.machine = results[0]["machine"] if results else None
    for r in rows:
      torch = (f", PyTorch {r['torch_images_per_s']:.0f} ({r['jax_vs_torch']:.2f}x)"
               if r["torch_images_per_s"] else "")
      say(f"throughput {r['key']}: {r['images_per_s']:.0f} img/s, compile {r['compile_s']} s"
          + torch)
    if self.machine:
      write_json(self.back.root / "throughput.json",
                 {"machine": self.machine, "size": self.args.size, "rows": rows,
                  "not_reached": [k for res in results for k in res["not_reached"]]})
    self.piece("throughput", status="done" if rows else "failed", cells=len(rows))

  def known_speeds(self) -> dict[str, float]:
    """This visit's cells, else those of earlier visits kept in the repo."""
    kept = json.loads(SPEEDS.read_text()).get(self.args.size, {}) if SPEEDS.exists() else {}
    return {**{k: v["step_s"] for k, v in kept.items()}, **self.speeds}

  def plan(self, row: Row, resumed: int | None) -> tuple[int, float | None, str] | None:
    """(seeds, estimate, why) for a row that may start now, else None."""
    steps, speeds = row_steps(row), self.known_speeds()
    fits = lambda s: s is not None and s <= self.left() - self.size.margin_s  # noqa: E731
    choices = (resumed,) if resumed else self.size.seed_choices
    for seeds in choices:
      estimate = estimate_row_s(row, seeds, steps, speeds, self.size)
      if fits(estimate):
        return seeds, estimate, "fits whole"
    seeds = choices[-1]
    estimate = estimate_row_s(row, seeds, steps, speeds, self.size)
    returnable = row.checkpoint_mib_per_seed * seeds * MIB < self.back.budget() * 0.9
    if returnable and self.left() - self.size.margin_s >= self.size.min_row_s:
      return seeds, estimate, "does not fit: stopped and returned to continue next visit"
    return None

  def train_row(self, row: Row) -> bool:
    """A row's sweep until it finishes or the end comes (SIGTERM: main.py
    saves its step); True when it finished and was recorded."""
    workdir = self.scratch / "runs" / row.name
    resumed = len(list(workdir.glob("seed_*"))) or None
    planned = self.plan(row, resumed)
    if planned is None:
      say(f"{row.name}: not started ({self.left():.0f} s left)")
      self.piece(row.name, status="not started", left_s=round(self.left()))
      return False
    seeds, estimate, why = planned
    command = row_command(row, seeds, str(workdir))
    say(f"{row.name}: {seeds} seeds, estimate "
        + (f"{estimate:.0f} s" if estimate else "unknown (no speed measured)")
        + f", {self.left():.0f} s left: {why}" + (" (resumed)" if resumed else ""))
    self.piece(row.name, status="running", seeds=seeds, estimate_s=estimate, resumed=bool(resumed),
               command=shlex.join(command))
    start = time.time()
    code, _ = bench.supervise([sys.executable, *command[1:]],
                              self.scratch / "logs" / f"{row.name}.log",
                              stop_at=time.monotonic() + self.left() - self.size.margin_s,
                              kill_at=time.monotonic() + self.left() - 10, cwd=ROOT)
    wall = time.time() - start
    if (workdir / "sweep.json").exists():
      return self.record(row, workdir, command, wall, estimate)
    if code in (0, -signal.SIGTERM, -signal.SIGKILL):
      self.keep_for_resume(row, workdir, wall, estimate)
    else:
      log = (self.scratch / "logs" / f"{row.name}.log").read_text(errors="replace")
      say(f"{row.name}: failed with exit status {code}; its log ends:\n{log[-3000:]}")
      self.piece(row.name, status="failed", exit_status=code, wall_s=round(wall))
    return False

  def record(self, row: Row, workdir: Path, command: list[str], wall: float,
             estimate: float | None) -> bool:
    """results_table record on the box (weights included: over git's 2 MiB in
    records/published/, which `land` puts outside the repository; `Back` drops
    the largest if they cannot all return), as run on the box."""
    label = hardware_label(self.machine) if self.machine else "the borrowed GPU box"
    records = self.back.root / "records"
    done = subprocess.run(
        [sys.executable, "-m", "cnn.report.results_table", "record", str(workdir), "--name",
         row.name, "--tag", "box", "--publish-dir", str(records / PUBLISHED), "--hardware",
         label, "--command",
         shlex.join(command).replace(
             f"{self.scratch}/runs/", "runs/"), "--results-dir", str(records),
         *(["--commit", self.args.commit] if self.args.commit else [])],
        cwd=ROOT, capture_output=True, text=True)
    sweep = json.loads((workdir / "sweep.json").read_text())
    status = "recorded" if done.returncode == 0 else "trained, record failed"
    accuracy = sweep["test_accuracy"]
    say(f"{row.name}: {status} after {wall:.0f} s (estimate {estimate and round(estimate)} s): "
        f"test accuracy {100 * accuracy['mean']:.2f} +- {100 * accuracy['std']:.2f} "
        f"(n={accuracy['n']})" + (f"\n{done.stderr[-1500:]}" if done.returncode else ""))
    shutil.rmtree(self.back.root / "resume" / row.name, ignore_errors=True)
    self.piece(row.name, status=status, wall_s=round(wall), estimate_s=estimate,
               seeds=sweep["seeds"], test_accuracy=sweep["test_accuracy"],
               **self.against_bare_step(row, workdir, len(sweep["seeds"])))
    return done.returncode == 0

  def against_bare_step(self, row: Row, workdir: Path, seeds: int) -> dict:
    """main.py's training images/s over the whole row (all seeds, its timed
    steps, epoch ends included) against the bare step of the same model and
    seed count, when this visit timed that cell (issue #46 item 6)."""
    results = json.loads((workdir / "seed_0" / "results.json").read_text())
    seconds = results["wall_time_s"] - (results.get("compile_time_s") or 0.0)
    row_rate = results["steps"] * results["batch_size"] * seeds / seconds
    key = Cell("", row.registered, "float32", seeds, True).key
    bare = self.speeds.get(key)
    found = {"row_images_per_s": round(row_rate, 1)}
    if bare:
      bare_rate = results["batch_size"] * seeds / bare
      found.update(bare_step_images_per_s=round(bare_rate, 1),
                   row_vs_bare_step=round(row_rate / bare_rate, 3))
      say(f"{row.name}: main.py {row_rate:.0f} img/s over the row, the bare step "
          f"{bare_rate:.0f} ({row_rate / bare_rate:.2f}x)")
    return found

  def keep_for_resume(self, row: Row, workdir: Path, wall: float, estimate) -> None:
    """A stopped row: its workdir returns (checkpoints kept: 1) for the next visit."""
    target = self.back.root / "resume" / row.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(workdir, target, ignore=shutil.ignore_patterns("*.lock", "*.tmp"))
    say(f"{row.name}: stopped after {wall:.0f} s; its checkpoint returns to continue")
    self.piece(row.name, status="stopped, returned", wall_s=round(wall), estimate_s=estimate)

  def run(self) -> int:
    say(f"main: {self.left():.0f} s; size {self.args.size}; queue {self.args.queue}")
    self.back.publish()
    if self.args.queue == "rows":
      self.throughput()
      for row in self.size.rows:
        if self.left() < self.size.margin_s + 5:
          break
        if row.name in self.args.done:
          say(f"{row.name}: recorded by an earlier visit; skipped")
          continue
        self.train_row(row)
    speedrun_pieces(self)
    self.back.visit["ended"] = now_iso()
    self.back.publish()
    say(f"main: done, {self.left():.0f} s left; {VISIT_JSON} and "
        f"{len(self.back.visit['back']['parts'])} back parts in $OUT")
    return 0


def speedrun_pieces(visit: Visit) -> None:
  """Ours, then airbench94 and airbench94_muon as published when their
  scripts were carried (`--airbench`; tools/box_airbench.py): each piece gets
  an equal share of what is left (a piece done early hands its time on) and
  starts only with `speedrun_min_s` in its share; each returns its JSON."""
  pieces = [("speedrun", speedrun_piece)]
  if visit.args.airbench:
    pieces += [(name, airbench_piece) for name in box_airbench.SCRIPTS]
  for i, (name, piece) in enumerate(pieces):
    share = (visit.left() - visit.size.margin_s) / (len(pieces) - i)
    if not visit.size.speedrun_seeds or share < visit.size.speedrun_min_s:
      visit.piece(name, status=f"not started: {max(share, 0):.0f} s for it, "
                  f"{visit.size.speedrun_min_s:.0f} s needed")
      continue
    piece(visit, name, share)


def speedrun_piece(visit: Visit, name: str, seconds: float) -> None:
  """`python -m cnn.speedrun` for `seconds` at most (SIGTERM then); the seeds
  that finished return in speedrun.json (it is rewritten after every seed)."""
  size = visit.size
  out = visit.scratch / "speedrun.json"
  command = [sys.executable, "-m", "cnn.speedrun", "--seeds", str(size.speedrun_seeds),
             f"--out={out}", *size.speedrun]
  say(f"{name}: {' '.join(command[1:])}, {seconds:.0f} s for it")
  (visit.scratch / "logs").mkdir(parents=True, exist_ok=True)
  start = time.monotonic()
  code, _ = bench.supervise(command, visit.scratch / "logs" / "speedrun.log", cwd=ROOT,
                            stop_at=start + seconds, kill_at=start + seconds + 15)
  wall = time.monotonic() - start
  if out.exists():
    shutil.copy(out, visit.back.root / "speedrun.json")
    result = json.loads(out.read_text())
    acc, sec = result["test_accuracy"], result["train_seconds"]
    say(f"{name}: {acc['n']} seeds, test accuracy {100 * acc['mean']:.2f} ± "
        f"{100 * acc['std']:.2f}%, {sec['mean']:.3f} ± {sec['std']:.3f} s each")
    visit.piece(name, status="done" if code == 0 else f"stopped ({code})",
                seeds=acc["n"], wall_s=round(wall))
  else:
    visit.piece(name, status=f"failed ({code}), nothing finished", wall_s=round(wall))


def airbench_piece(visit: Visit, name: str, seconds: float) -> None:
  """airbench's script `name`, unchanged, on the carried CIFAR-10 (its
  cifar10/*.pt written by a child first), stopped after `speedrun_seeds`
  runs or at the end of its share; returns NAME.json."""
  start = time.monotonic()
  folder = visit.scratch / "airbench"
  if not (folder / box_airbench.MANIFEST).exists():
    shutil.copytree(ROOT / visit.args.airbench, folder, dirs_exist_ok=True)
  if not (folder / "cifar10" / "test.pt").exists():
    code, _ = bench.supervise([sys.executable, "tools/box_airbench.py", "data", "--folder",
                               str(folder)], visit.scratch / "logs" / "airbench_data.log",
                              cwd=ROOT, kill_at=start + seconds)
    if code:
      log = (visit.scratch / "logs" / "airbench_data.log").read_text(errors="replace")
      say(f"{name}: writing its data failed ({code}):\n{log[-2000:]}")
      visit.piece(name, status=f"failed ({code}) writing cifar10/*.pt")
      return
  left = seconds - (time.monotonic() - start)
  say(f"{name}: up to {visit.size.speedrun_seeds} runs, {left:.0f} s for it")
  result = box_airbench.run_script(name, folder, visit.size.speedrun_seeds, left,
                                   visit.scratch / "logs" / f"{name}.log")
  result["staged"] = json.loads((folder / box_airbench.MANIFEST).read_text())
  write_json(visit.back.root / f"{name}.json", result)
  if result["runs"]:
    acc, sec = result["test_accuracy"], result["train_seconds"]
    say(f"{name}: {acc['n']} runs, test accuracy {100 * acc['mean']:.2f} ± "
        f"{100 * acc['std']:.2f}%, {sec['mean']:.3f} ± {sec['std']:.3f} s each")
  else:
    say(f"{name}: no run finished (exit status {result['exit_status']}); its log ends:\n"
        + result["log_tail"][-1500:])
  visit.piece(name, status="done" if len(result["runs"]) == result["runs_asked"] else
              f"{len(result['runs'])} of {result['runs_asked']} runs", runs=len(result["runs"]),
              wall_s=round(time.monotonic() - start))


def unpack_resumes(scratch: Path) -> None:
  """Rows the last visit stopped: SCRATCH/resume-parts/<row>/ -> runs/<row>."""
  for parts in sorted((scratch / "resume-parts").glob("*")):
    carry.unpack(parts, scratch / "runs" / parts.name, replace=True)
    say(f"resumed {parts.name} from the last visit's checkpoint")


def command_main(args: argparse.Namespace) -> int:
  Path(args.out).mkdir(parents=True, exist_ok=True)
  unpack_resumes(Path(args.scratch))
  return Visit(args).run()


# ----------------------------------------------------------------- smoke


SMOKE = """
import json, platform, subprocess, sys, time
import jax, flax, optax, orbax.checkpoint as ocp
from benchmarks import run as bench
out = sys.argv[1]
info = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
        "optax": optax.__version__, "orbax": ocp.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()]}
try:
  info["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
except OSError as e:
  info["nvidia_smi"] = f"not here ({e})"
start = time.perf_counter()
step = bench.JaxStepper("resnet20_v1", "float32", 128, {})
info["smoke"] = {"compile_s": round(step.compile_s, 2),
                 "images_per_s": round(step.images_per_s(50), 1), "seconds": 0}
info["smoke"]["seconds"] = round(time.perf_counter() - start, 1)
import cnn.train, cnn.sweep, cnn.augment, main  # the training command's imports, all of them
try:  # what airbench's scripts need beside us (the speedrun queue)
  import importlib.util, torch
  info["torch"] = {"version": torch.__version__, "cuda": torch.cuda.is_available(),
                   "triton": importlib.util.find_spec("triton") is not None}
except ImportError as e:
  info["torch"] = f"not here ({e})"
json.dump(info, open(out, "w"), indent=1)
print(info["nvidia_smi"]); print({k: v for k, v in info.items() if k != "nvidia_smi"})
"""


def command_smoke(args: argparse.Namespace) -> int:
  """The first command's check of the box: versions, devices, a ResNet-20
  train step at batch 128, and every import of the training command."""
  Path(args.out).mkdir(parents=True, exist_ok=True)
  return subprocess.run([sys.executable, "-c", SMOKE, str(Path(args.out) / "box.json")],
                        cwd=ROOT, check=False).returncode


# ------------------------------------------------------- here: prepare, visit


def requirement_lines(path: Path) -> list[str]:
  return [line.split("#")[0].strip() for line in path.read_text().splitlines()
          if line.split("#")[0].strip()]


def command_wheels(args: argparse.Namespace) -> int:
  """The wheels of requirements-accelerator.txt for the box's Python."""
  wanted = requirement_lines(ROOT / "requirements-accelerator.txt")
  shutil.rmtree(args.dest, ignore_errors=True)  # only these wheels travel: one version of each
  args.dest.mkdir(parents=True)
  done = subprocess.run(
      [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
       "--python-version", "3.12", "--implementation", "cp", "--platform",
       "manylinux2014_x86_64", "-d", str(args.dest), *wanted], capture_output=True, text=True)
  if done.returncode:
    raise UserError(f"pip download of {' '.join(wanted)} failed ({done.stderr.strip()[-200:]}); "
                    "check the network to PyPI, or copy the wheels into " + str(args.dest))
  say(f"wheels in {args.dest}: " + ", ".join(sorted(p.name for p in args.dest.glob("*.whl"))))
  return 0


def command_prepare(args: argparse.Namespace) -> int:
  """Here, before a visit: the wheels and the data parts in .box/."""
  from tools import box_data  # pylint: disable=import-outside-toplevel
  if not args.archive_dir:
    raise UserError("no dataset files: set CNN_ARCHIVE_DIR or pass --archive-dir")
  if args.airbench:
    staged = box_airbench.stage_any(args.airbench, ROOT / BOX / "airbench")
    say(f"airbench's scripts at {staged['commit'][:12]} in {BOX / 'airbench'} "
        "(`visit --queue speedrun` carries them)")
  command_wheels(argparse.Namespace(dest=ROOT / WHEELS))
  wheels = sum(f.stat().st_size for f in (ROOT / WHEELS).glob("*.whl"))
  part_bytes = box_data.default_part_bytes(ROOT, wheels)
  datasets = args.datasets.split(",")
  if not args.again and reusable_parts(datasets, part_bytes):
    say(f"the data parts in {DATA} hold {','.join(datasets)} and still fit one command each "
        "beside the tree: kept (--again writes them anew)")
    return 0
  box_data.write_parts(Path(args.archive_dir), datasets, ROOT / DATA, part_bytes)
  parts = balance_parts(ROOT / DATA)
  sizes = ", ".join(f"{p['bytes'] / MIB:.1f}" for p in parts)
  say(f"{len(parts)} data parts of {sizes} MiB in "
      f"{DATA} (at most {part_bytes / MIB:.1f} fit beside today's tree); `visit` prints the commands")
  return 0


def balance_parts(data_dir: Path) -> list[dict]:
  """The same stream cut into as many parts of equal size: the room left in
  each command is then shared, and the tree can grow a few MiB before the
  parts must be written again."""
  path = data_dir / "manifest.json"
  manifest = json.loads(path.read_text())
  stream = b"".join((data_dir / p["name"]).read_bytes() for p in manifest["parts"])
  size = -(-len(stream) // len(manifest["parts"]))
  parts = []
  for i, old in enumerate(manifest["parts"]):
    chunk = stream[i * size:(i + 1) * size]
    (data_dir / old["name"]).write_bytes(chunk)
    parts.append({"name": old["name"], "bytes": len(chunk),
                  "sha256": hashlib.sha256(chunk).hexdigest()})
  manifest["parts"] = parts
  write_json(path, manifest)
  return parts


def reusable_parts(datasets: list[str], part_bytes: int) -> bool:
  """Parts written earlier of the same datasets, each present with its size
  and still within one command beside today's tree (the encoding takes
  minutes; `add` on the box checks each part's SHA-256 anyway)."""
  path = ROOT / DATA / "manifest.json"
  if not path.exists():
    return False
  manifest = json.loads(path.read_text())
  return manifest.get("datasets") == datasets and all(
      (ROOT / DATA / p["name"]).is_file() and (ROOT / DATA / p["name"]).stat().st_size
      == p["bytes"] <= part_bytes + MIB for p in manifest["parts"])  # the margin may go


def tree_bytes() -> int:
  """What travels with every command: tracked and untracked-not-ignored files."""
  names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.split(b"\0")
  return sum((ROOT / n.decode()).stat().st_size for n in names
             if n and (ROOT / n.decode()).is_file())


def path_bytes(path: Path) -> int:
  full = ROOT / path
  return full.stat().st_size if full.is_file() else sum(
      f.stat().st_size for f in full.rglob("*") if f.is_file())


def install(wheels: Path) -> str:
  """The box's way to add a package: the carried wheels into SCRATCH/site."""
  return (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
          f"--upgrade --target {SCRATCH}/site {wheels}/*.whl")


def head(wheels: Path | None) -> str:
  """Every command's start: stop at the first failure, the wheels importable
  (installed by the first command; again by the main one on a fresh box)."""
  again = f"[ -d {SCRATCH}/site ] || {install(wheels)}; " if wheels else ""
  return f"set -eo pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH={SCRATCH}/site; " + again


def rows_done(size: Size, results_dir: Path) -> list[str]:
  """Rows an earlier visit recorded (the kit records with the tag "box") with
  at least the fewest seeds a visit trains: the next visit skips them."""
  done = []
  for row in size.rows:
    records = [json.loads(p.read_text()) for p in results_dir.glob(f"{row.name}_box_seed*.json")]
    if sum(r.get("tag") == "box" for r in records) >= min(size.seed_choices):
      done.append(row.name)
  return done


def visit_commands(size: str, commit: str, box: Path = BOX,
                   results_dir: Path = ROOT / "results", queue: str = "rows") -> list[dict]:
  """The visit: [{name, command, carry, timeout_s, send_mib}], within the
  limits. `box`: the folder (relative to the repo, ignored by git) prepared;
  rows recorded in `results_dir` by earlier visits are skipped. `queue`:
  "rows" (throughput, the rows, then the speedrun with what is left) or
  "speedrun" (only the speedrun side by side: ours, and airbench's scripts
  when `prepare --airbench` staged them)."""
  wheels, data_dir, resume_dir = box / WHEELS.name, box / DATA.name, box / RESUME.name
  airbench = box / "airbench"
  staged = (ROOT / airbench / box_airbench.MANIFEST).exists()
  manifest_path = ROOT / data_dir / "manifest.json"
  if not manifest_path.exists() or not list((ROOT / wheels).glob("*.whl")):
    raise UserError(f"no data parts or wheels in {box}: run `python tools/accelerator_kit.py "
                    "prepare` first")

  def add_part(part: str) -> str:
    return (f"python3 tools/box_data.py add --part {part} --manifest {data_dir}/manifest.json "
            f"--staging {SCRATCH}/parts")

  parts = [p["name"] for p in json.loads(manifest_path.read_text())["parts"]]
  main_s = SIZES[size]().main_s
  done = rows_done(SIZES[size](), results_dir)
  data = lambda name: str(data_dir / name)  # noqa: E731
  commands = [{"name": "first", "carry": [str(wheels), data("manifest.json"), data(parts[0])],
               "timeout_s": 300, "command": head(None) + f"{install(wheels)}; "
               f"{add_part(data(parts[0]))}; python3 tools/accelerator_kit.py smoke --out $OUT"}]
  for part in parts[1:-1]:
    commands.append({"name": f"data {part}", "carry": [data("manifest.json"), data(part)],
                     "timeout_s": 120, "command": head(None) + add_part(data(part))})
  resumes = sorted((ROOT / resume_dir).glob("*")) if (ROOT / resume_dir).exists() else []
  resumes = resumes if queue == "rows" else []
  for resume in resumes:
    commands.append({"name": f"resume {resume.name}", "carry": [str(resume_dir / resume.name)],
                     "timeout_s": 120, "command": head(None) +
                     f"mkdir -p {SCRATCH}/resume-parts && cp -r {resume_dir / resume.name} "
                     f"{SCRATCH}/resume-parts/"})
  last = parts[-1]
  main = ("T0=$(date +%s); " + head(wheels)
          + (f"{add_part(data(last))}; " if len(parts) > 1 else "")
          + f"python3 tools/box_data.py assemble --staging {SCRATCH}/parts --manifest "
          f"{data_dir}/manifest.json --data-dir {SCRATCH}/data; CNN_ARCHIVE_DIR={SCRATCH}/data "
          f"python3 tools/accelerator_kit.py main --out $OUT --size {size} --until "
          f"$((T0+{main_s})) --commit {commit} --queue {queue}"
          + (f" --done {','.join(done)}" if done else "")
          + (f" --airbench {airbench}" if staged else "") + f" 2>&1 | tee $OUT/{MAIN_LOG}")
  commands.append({"name": "main", "carry": [str(wheels), data("manifest.json"), data(last),
                                             *([str(airbench)] if staged else [])],
                   "timeout_s": min(main_s + 30, LIMITS.command_s), "command": main})
  check_limits(commands)
  return commands


def check_limits(commands: list[dict]) -> None:
  """Every command within the tool's limits before the box starts."""
  tree = tree_bytes()
  for c in commands:
    sent = tree + sum(path_bytes(Path(p)) for p in c["carry"])
    c["send_mib"] = round(sent / MIB, 1)
    if len(c["command"]) > LIMITS.command_chars:
      raise UserError(f"command {c['name']!r} has {len(c['command'])} characters, over the "
                      f"tool's {LIMITS.command_chars}")
    if len(c["carry"]) > LIMITS.carry_paths:
      raise UserError(f"command {c['name']!r} carries {len(c['carry'])} paths, over 8")
    tracked = [p for p in c["carry"] if subprocess.run(
        ["git", "check-ignore", "-q", p], cwd=ROOT).returncode != 0]
    if tracked:
      raise UserError(f"command {c['name']!r} carries {tracked[0]}, which git does not ignore "
                      "(it would travel twice): keep carried files under .box/")
    if sent > LIMITS.send_bytes:
      raise UserError(f"command {c['name']!r} sends {sent / MIB:.1f} MiB (tree {tree / MIB:.1f}),"
                      f" over 64 MiB: run `prepare` again (it sizes the parts to the tree)")


def head_commit() -> str:
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
  return commit + ("-dirty" if dirty else "")


def command_visit(args: argparse.Namespace) -> int:
  commands = visit_commands(args.size, head_commit(), results_dir=Path(args.results_dir),
                            queue=args.queue)
  if args.json:
    print(json.dumps(commands, indent=1))
    return 0
  for i, c in enumerate(commands, 1):
    print(f"# {i}. {c['name']}: timeout_s={c['timeout_s']}, sends {c['send_mib']} MiB, "
          f"{len(c['command'])} characters\ncarry: {json.dumps(c['carry'])}\n{c['command']}\n")
  print("# Fire them back to back (the box keeps /tmp/cnnbox ~30 s), then give the box back and:\n"
        "#   python tools/accelerator_kit.py land <files_at of the main command>")
  return 0


# ------------------------------------------------------------ here: land


def command_land(args: argparse.Namespace) -> int:
  """After a visit: the returned records into results/, a stopped row's
  checkpoint into .box/resume/ for the next visit, the measured speeds into
  tools/box_speeds.json; prints what the box proved of the estimates."""
  got = Path(args.dir)
  visit = json.loads((got / VISIT_JSON).read_text())
  staging = Path(args.resume_dir).parent / "landing"
  shutil.rmtree(staging, ignore_errors=True)
  parts_dir = staging / "parts"
  parts_dir.mkdir(parents=True)
  for part in visit["back"]["parts"]:
    shutil.copy(got / part["file"], parts_dir / part["file"])
  (parts_dir / f"{BACK}.pack.json").write_text(json.dumps(visit["back"]))
  carry.unpack(parts_dir, staging / BACK, replace=True)
  payload = staging / BACK
  results_dir = Path(args.results_dir)
  for record in sorted((payload / "records").glob("*.json")):
    shutil.copy(record, results_dir / record.name)
    say(f"recorded {results_dir / record.name}")
  for weights in sorted((payload / "records" / "weights").glob("*.safetensors")):
    (results_dir / "weights").mkdir(exist_ok=True)
    shutil.copy(weights, results_dir / "weights" / weights.name)
  for weights in sorted((payload / "records" / PUBLISHED).glob("*.safetensors")):
    Path(args.publish_dir).mkdir(parents=True, exist_ok=True)
    shutil.copy(weights, Path(args.publish_dir) / weights.name)
    say(f"{weights.name}: over git's 2 MiB, kept in {args.publish_dir} (its size and SHA-256 "
        "are in its record)")
  for row in sorted((payload / "resume").glob("*")) if (payload / "resume").exists() else []:
    carry.pack(row, Path(args.resume_dir) / row.name, 15 * MIB, lambda _: False)
    say(f"{row.name}: its checkpoint is in {args.resume_dir}/{row.name}; the next `visit` "
        "carries it")
  if (payload / "throughput.json").exists():
    keep_speeds(json.loads((payload / "throughput.json").read_text()), Path(args.speeds))
  keep_side_by_side(payload, visit, Path(args.bench_dir))
  if args.readme and list((payload / "records").glob("*.json")):
    from cnn.report import results_table  # pylint: disable=import-outside-toplevel
    results_table.rewrite_tables(Path(args.readme), results_dir)
    say(f"{args.readme}: the results table rendered again")
  for name, piece in visit["pieces"].items():
    if piece.get("estimate_s") and piece.get("wall_s") and piece["status"] == "recorded":
      say(f"{name}: estimated {piece['estimate_s']:.0f} s, took {piece['wall_s']} s "
          f"({piece['wall_s'] / piece['estimate_s']:.2f}x), {piece['status']}")
  return 0


def keep_side_by_side(payload: Path, visit: dict, bench_dir: Path) -> Path | None:
  """Ours and airbench's scripts from one visit, in one file
  (benchmarks/results/record_speedrun_box_<date>.json) that
  benchmarks/record_speedrun.py turns into docs/experiments.md's table."""
  names = {"speedrun": "ours", **{n: n for n in box_airbench.SCRIPTS}}
  found = {key: json.loads((payload / f"{name}.json").read_text())
           for name, key in names.items() if (payload / f"{name}.json").exists()}
  if not found:
    return None
  date = visit["started"][:10]
  kept = bench_dir / f"record_speedrun_box_{date}.json"
  write_json(kept, {"date": date, "visit_started": visit["started"],
                    "device": found.get("ours", {}).get("device"), **found})
  for key, result in found.items():
    if result.get("test_accuracy"):
      acc, sec = result["test_accuracy"], result["train_seconds"]
      say(f"{key}: n={acc['n']}, test accuracy {100 * acc['mean']:.2f} ± "
          f"{100 * acc['std']:.2f}%, {sec['mean']:.3f} ± {sec['std']:.3f} s each")
  say(f"the speedrun side by side kept in {kept}")
  return kept


def keep_speeds(throughput: dict, path: Path = SPEEDS) -> None:
  """The box's cells, kept in the repo for the next visit's estimates."""
  kept = json.loads(path.read_text()) if path.exists() else {}
  size = kept.setdefault(throughput["size"], {})
  for r in throughput["rows"]:
    size[r["key"]] = {"step_s": r["step_s"], "images_per_s": r["images_per_s"],
                      "compile_s": r["compile_s"], "measured": throughput["machine"]["date"],
                      "on": hardware_label(throughput["machine"])}
  write_json(path, kept)
  say(f"{len(throughput['rows'])} speeds kept in {path}")


# ------------------------------------------------------------- the CLI


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="tools/accelerator_kit.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  prep = sub.add_parser("prepare", help="here: .box/ with the wheels and the data parts")
  prep.add_argument("--archive-dir", default=os.environ.get("CNN_ARCHIVE_DIR", ""),
                    help="the original dataset files (default: $CNN_ARCHIVE_DIR)")
  prep.add_argument("--datasets", default="cifar10", help="comma-separated (cifar10,mnist)")
  prep.add_argument("--again", action="store_true", help="write the data parts even if kept")
  prep.add_argument("--airbench", type=Path, default=None,
                    help="a clone (or a bare snapshot) of KellerJordan/cifar10-airbench: its "
                    "two scripts go to .box/airbench/ for `visit --queue speedrun`")
  wheels = sub.add_parser("wheels", help="here: the box's wheels (requirements-accelerator.txt)")
  wheels.add_argument("--dest", type=Path, default=ROOT / WHEELS)
  visit = sub.add_parser("visit", help="here: print the visit's commands")
  visit.add_argument("--size", choices=SIZES, default="box")
  visit.add_argument("--json", action="store_true", help="as JSON (the rehearsal reads it)")
  visit.add_argument("--queue", choices=QUEUES, default="rows",
                     help="rows: throughput, the paper rows, then the speedrun with what is "
                     "left; speedrun: only ours beside airbench's (issue #48)")
  visit.add_argument("--results-dir", default=str(ROOT / "results"),
                     help="rows recorded here by earlier visits are skipped")
  land = sub.add_parser("land", help="here, after a visit: record what returned")
  land.add_argument("dir", help="the folder holding the main command's returned files")
  land.add_argument("--results-dir", default=str(ROOT / "results"))
  land.add_argument("--speeds", default=str(SPEEDS), help="where the box's speeds are kept")
  land.add_argument("--readme", default=str(ROOT / "README.md"),
                    help="render its results table again ('' : leave it)")
  land.add_argument("--resume-dir", default=str(ROOT / RESUME),
                    help="where a stopped row's checkpoint waits for the next visit")
  land.add_argument("--bench-dir", default=str(ROOT / "benchmarks" / "results"),
                    help="where the speedrun's returned JSON is kept")
  land.add_argument("--publish-dir", default=str(Path.home() / "published_weights"),
                    help="where returned weights over git's 2 MiB are kept, outside the "
                         "repository (results/README.md)")
  smoke = sub.add_parser("smoke", help="on the box: versions, devices, a train step")
  smoke.add_argument("--out", required=True)
  main = sub.add_parser("main", help="on the box: the time-boxed queue")
  main.add_argument("--out", required=True)
  main.add_argument("--size", choices=SIZES, default="box")
  main.add_argument("--until", type=float, required=True, help="end, in epoch seconds")
  main.add_argument("--commit", default=None, help="the commit the visit's tree is")
  main.add_argument("--scratch", default=SCRATCH)
  main.add_argument("--done", type=lambda s: s.split(","), default=[],
                    help="rows recorded by earlier visits (comma-separated): skipped")
  main.add_argument("--queue", choices=QUEUES, default="rows")
  main.add_argument("--airbench", default="",
                    help="airbench's staged scripts (tools/box_airbench.py): run after ours")
  cells = sub.add_parser("cells", help="child: time cells of one determinism setting")
  for flag in ("--size", "--keys", "--json"):
    cells.add_argument(flag, required=True, type=Path if flag == "--json" else str)
  cells.add_argument("--until", type=float, required=True)
  return p


COMMANDS = {"prepare": command_prepare, "wheels": command_wheels, "visit": command_visit,
            "land": command_land, "smoke": command_smoke, "main": command_main,
            "cells": command_cells}


def main(argv: list[str]) -> int:
  args = parser().parse_args(argv)
  try:
    return COMMANDS[args.command](args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
