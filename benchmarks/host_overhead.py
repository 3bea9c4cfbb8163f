"""main.py's training loop against its bare train step: where the host makes the device wait.

  CNN_ARCHIVE_DIR=../shared/datasets python benchmarks/host_overhead.py \
      --json benchmarks/results/host_overhead_cpu.json
  python benchmarks/host_overhead.py --render benchmarks/results/host_overhead_cpu.json

Every candidate trains the same config (default: configs/resnet20v1_cifar10.py,
the paper recipe, at CPU size: batch 32, 32 steps per epoch, 3 epochs, the
data on the device, a progress line every 8 steps: as many per epoch as the
box's 391-step epochs get at `log.every_steps=100`), in one process, taking
turns round after round; the table has the median of the rounds and its
ratio to the bare step's:

- `step`: the jitted train step alone (`Experiment.train_step`), on one fixed
  batch already on the device, the state threaded through: the ceiling.
- `step + feed`: the same step on the batches `config.data.on_device`
  gathers on the device (`device_pipeline.py`), nothing else.
- `main.py loop ...`: `train.train_epochs` on a fresh workdir, what
  `main.py` runs between its compile and its test evaluation (progress lines,
  epoch ends, checkpoints, the save in flight at the end waited for), as
  images over its wall time; with the overrides the label names.
- the same for a seed sweep (`--sweep-seeds 2`: two seeds vmapped,
  `cnn/sweep.py`'s SeedStack): its stacked step against its loop.

Each loop's first step (it compiles in the first round) is left out of its
time and its images. Also reported: the loop's own `timing.jsonl` speed
(`train_images_per_s`, which leaves out the epoch's end) and the host's
time to dispatch one step of the feed (a step is dispatched ahead, so this
only costs where it exceeds the device's time per step).
"""
import argparse
import datetime
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import run as bench  # noqa: E402

CONFIG = "configs/resnet20v1_cifar10.py"
BASE = {"batch_size": 32, "data.train_split": "train[:1024]", "num_epochs": 3,
        "data.on_device": True, "data.source": "archives", "log.every_steps": 8}
# label -> overrides of the base config, for main.py's loop (single run and sweep)
LOOPS = {
    "main.py loop (checkpoint each epoch)": {},
    "main.py loop, checkpoint.every_epochs=0": {"checkpoint.every_epochs": 0},
    "main.py loop, checkpoint.every_epochs=0, no progress lines": {
        "checkpoint.every_epochs": 0, "log.every_steps": 10**9},
}
SWEEP_LOOPS = {
    "sweep loop (checkpoint each epoch)": {},
    "sweep loop, checkpoint.every_epochs=0": {"checkpoint.every_epochs": 0},
    "sweep loop, checkpoint.every_epochs=0, no progress lines": {
        "checkpoint.every_epochs": 0, "log.every_steps": 10**9},
}
DISPATCH_STEPS = 8  # fewer than the steps the CPU client keeps in flight before it waits


def make_config(config_file: str, overrides: dict):
  """`configs/NAME.py`'s config with `overrides` (flattened keys)."""
  module = importlib.import_module(config_file.removesuffix(".py").replace("/", "."))
  config = module.get_config()
  config.update_from_flattened_dict(overrides)
  return config


def never() -> bool:
  return False


class BareStep:
  """`train_step` (one run's, or the stacked seeds') on a fixed device batch,
  or on the device feed's batches."""

  def __init__(self, step: Callable, state, sums, batch, feed: Callable, images_per_step: int):
    self.step, self.state, self.sums, self.batch = step, state, sums, batch
    self.feed, self.images_per_step = feed, images_per_step

  def images_per_s(self, steps: int, fed: bool = False) -> float:
    import jax  # pylint: disable=import-outside-toplevel
    batches = self.feed(steps) if fed else (self.batch for _ in range(steps))
    start = time.perf_counter()
    for batch in batches:
      self.state, self.sums, loss = self.step(self.state, self.sums, batch)
    jax.block_until_ready((self.state, self.sums, loss))
    return self.images_per_step * steps / (time.perf_counter() - start)

  def dispatch_ms(self) -> float:
    """Host milliseconds per step to fetch a fed batch and dispatch the step."""
    import jax  # pylint: disable=import-outside-toplevel
    batches = self.feed(DISPATCH_STEPS)
    start = time.perf_counter()
    for batch in batches:
      self.state, self.sums, loss = self.step(self.state, self.sums, batch)
    took = time.perf_counter() - start
    jax.block_until_ready(loss)
    return 1e3 * took / DISPATCH_STEPS


def fed_batches(device_batches: Callable, steps_per_epoch: int, steps: int):
  """`steps` batches of the device feed, epoch after epoch from epoch 1."""
  for step in range(steps):
    epoch, offset = divmod(step, steps_per_epoch)
    if offset == 0:
      batches = iter(device_batches(1 + epoch, 0))
    yield next(batches)


def single_run(config_file: str, overrides: dict, shared=None):
  """An Experiment of the config (sharing `shared`'s data and evaluation)."""
  from cnn import train  # pylint: disable=import-outside-toplevel
  return train.Experiment(make_config(config_file, {**BASE, **overrides}), shared=shared)


def loop_once(exp, workdir: Path) -> dict:
  """One `train.train_epochs` of `exp` on a fresh workdir, as main.py runs it."""
  from cnn import train  # pylint: disable=import-outside-toplevel
  run = train.Run(exp, str(workdir))
  run.state = fresh(exp)  # the step donates the state: each round starts from a copy
  try:
    start = time.perf_counter()
    first_step = train.train_epochs(run, never)
    run.manager.wait_until_finished()
    wall = time.perf_counter() - start
  finally:
    run.close()
  return loop_sample(exp.total_steps, exp.config.batch_size, wall, first_step, run.timing)


def loop_sample(steps: int, images_per_step: int, wall: float, first_step: float,
                timing: list[dict]) -> dict:
  return {"images_per_s": (steps - 1) * images_per_step / (wall - first_step),
          "epoch_wall_s": (wall - first_step) / len(timing),
          "timing_images_per_s": statistics.median(t["train_images_per_s"] for t in timing)}


def fresh(exp):
  """A copy of the experiment's initial state, placed as the loop places it."""
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from cnn import train  # pylint: disable=import-outside-toplevel
  return train.replicate(exp.initial_state, NamedSharding(exp.mesh, PartitionSpec()))


def bare_single(exp) -> BareStep:
  state = fresh(exp)  # the step donates it
  batch = next(iter(exp.device_batches(0, 0)))

  def feed(steps: int):
    return fed_batches(exp.device_batches, exp.steps_per_epoch, steps)

  bare = BareStep(exp.train_step, state, exp.zero_sums(), batch, feed, exp.config.batch_size)
  warm_up(bare)
  return bare


def warm_up(bare: BareStep) -> None:
  """Compiles the step and the feed, and settles the arrays' shardings."""
  bare.images_per_s(4)
  bare.images_per_s(4, fed=True)


def sweep_experiments(config_file: str, overrides: dict, seeds: int, shared=None) -> list:
  """The seeds' Experiments, built as `sweep.train_stacked` builds them."""
  from cnn import seeds as seedlib, train  # pylint: disable=import-outside-toplevel
  config = make_config(config_file, {**BASE, **overrides, "sweep.placement": "vmap",
                                     "sweep.seeds": f"0-{seeds - 1}"})
  configs = [seedlib.seed_config(config, s) for s in range(seeds)]
  first = train.Experiment(configs[0], shared=shared)
  first.device_data  # pylint: disable=pointless-statement (shared by every seed)
  return [first, *(train.Experiment(c, shared=first) for c in configs[1:])]


def seed_stack(exps: list, workdir: Path):
  from cnn import sweep, train, workdir as workdirs  # pylint: disable=import-outside-toplevel
  root = workdirs.Workdir.of(str(workdir))
  mesh = sweep.seed_mesh(exps[0].mesh.devices, len(exps), 0)
  runs = [train.Run(e, root.seed(e.config.seed)) for e in exps]
  return sweep.SeedStack(runs, mesh, root), runs


def sweep_loop_once(exps: list, workdir: Path) -> dict:
  """One `train.train_epochs` of the stacked seeds, as `sweep.train_stacked` runs it."""
  from cnn import train  # pylint: disable=import-outside-toplevel
  stack, runs = seed_stack(exps, workdir)
  try:
    start = time.perf_counter()
    first_step = train.train_epochs(stack, never)
    synced = time.perf_counter()
    stack.sync()
    synced = time.perf_counter() - synced
    stack.wait_for_saves()
    wall = time.perf_counter() - start
  finally:
    for r in runs:
      r.close()
  sample = loop_sample(exps[0].total_steps, len(exps) * exps[0].config.batch_size, wall,
                       first_step, runs[0].timing)
  sample["timing_images_per_s"] *= len(exps)  # timing.jsonl counts its own seed's images
  sample["sync_ms"] = 1e3 * synced
  return sample


def bare_sweep(exps: list, workdir: Path) -> BareStep:
  stack, runs = seed_stack(exps, workdir)
  for r in runs:
    r.close()
  batches = [next(iter(e.device_batches(0, 0))) for e in exps]

  def feed(steps: int):
    return fed_batches(stack.batches, exps[0].steps_per_epoch, steps)

  bare = BareStep(stack.train_step, stack.state, stack.sums, batches, feed,
                  len(exps) * exps[0].config.batch_size)
  warm_up(bare)
  return bare


def measure(config_file: str, loops: list[str], sweep_loops: list[str], seeds: int,
            rounds: int, tmp: Path) -> list[dict]:
  """Every candidate once per round, in turn; one row per candidate."""
  base = single_run(config_file, {})
  steps = base.total_steps
  bare = bare_single(base)
  exps = {label: single_run(config_file, LOOPS[label], shared=base) for label in loops}
  timers = {"step": lambda: {"images_per_s": bare.images_per_s(steps)},
            "step + feed": lambda: {"images_per_s": bare.images_per_s(steps, fed=True),
                                    "dispatch_ms": bare.dispatch_ms()}}
  count = iter(range(10**6))
  for label, exp in exps.items():
    timers[label] = lambda e=exp: loop_once(e, tmp / f"w{next(count)}")
  if seeds > 1 and sweep_loops:
    stacked = {label: sweep_experiments(config_file, SWEEP_LOOPS[label], seeds, shared=base)
               for label in sweep_loops}
    bare_stack = bare_sweep(next(iter(stacked.values())), tmp / "bare_stack")
    timers[f"stacked step ({seeds} seeds)"] = lambda: {
        "images_per_s": bare_stack.images_per_s(steps)}
    for label, seed_exps in stacked.items():
      timers[label] = lambda e=seed_exps: sweep_loop_once(e, tmp / f"w{next(count)}")
  samples = {label: [] for label in timers}
  for i in range(rounds):
    for label, timer in timers.items():
      start = time.perf_counter()
      samples[label].append(timer())
      print(f"round {i + 1}: {label}: {samples[label][-1]['images_per_s']:.0f} images/s "
            f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
  return rows_of(samples, steps, base.config.batch_size)


def rows_of(samples: dict[str, list[dict]], steps: int, batch_size: int) -> list[dict]:
  """Medians of each candidate's samples, and the ratio to its bare step."""
  rows, reference = [], None
  for label, runs in samples.items():
    row = {"candidate": label, "steps": steps, "batch_size": batch_size, "rounds": len(runs)}
    for key in runs[0]:
      row[key] = statistics.median(r[key] for r in runs)
    row["samples"] = [round(r["images_per_s"], 1) for r in runs]
    if label == "step" or label.startswith("stacked step"):
      reference = row["images_per_s"]  # the loops below compare with the step above them
    row["vs_step"] = row["images_per_s"] / reference
    rows.append(row)
  return rows


def render(result: dict) -> str:
  m = result["machine"]
  lines = [f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, backend "
           f"{m['backend']}), jax {m['jax']}, commit {result['commit']}; {result['config']} "
           f"with {result['overrides']}; medians of {result['rows'][0]['rounds']} alternating "
           f"rounds; load average {m['load_before']} before, {m['load_after']} after.", "",
           "| candidate | images/s | vs bare step | wall s per epoch | timing.jsonl images/s "
           "| host ms to dispatch a step | ms per sweep sync |", "|---|---:|---:|---:|---:|---:|---:|"]
  for r in result["rows"]:
    cell = lambda key, f: f.format(r[key]) if key in r else ""  # noqa: E731
    lines.append(f"| {r['candidate']} | {r['images_per_s']:.0f} | {r['vs_step']:.2f}x | "
                 f"{cell('epoch_wall_s', '{:.2f}')} | {cell('timing_images_per_s', '{:.0f}')} | "
                 f"{cell('dispatch_ms', '{:.2f}')} | {cell('sync_ms', '{:.0f}')} |")
  return "\n".join(lines) + "\n"


def machine(load_before: tuple) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  return {"cpu": bench.cpu_model(), "cores": os.cpu_count(), "backend": jax.default_backend(),
          "devices": [d.device_kind for d in jax.devices()], "jax": jax.__version__,
          "load_before": [round(x, 1) for x in load_before],
          "load_after": [round(x, 1) for x in os.getloadavg()]}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=CONFIG)
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override the base config (JSON values), e.g. --set batch_size=16")
  parser.add_argument("--loops", default=";".join(LOOPS),
                      help="the single-run loops, by label, separated by ';'")
  parser.add_argument("--sweep-loops", default=";".join(SWEEP_LOOPS))
  parser.add_argument("--sweep-seeds", type=int, default=2, help="0 or 1: no sweep")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--json", default=None, help="write the result here")
  parser.add_argument("--render", default=None, help="print the table of a saved result")
  args = parser.parse_args()
  if args.render:
    sys.stdout.write(render(json.loads(Path(args.render).read_text())))
    return 0
  for item in args.set:
    key, value = item.split("=", 1)
    BASE[key] = json.loads(value)
  from cnn import backend  # pylint: disable=import-outside-toplevel
  backend.configure(make_config(args.config, BASE))  # as main.py: before JAX starts
  import jax  # pylint: disable=import-outside-toplevel
  load = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    # The sweep's stacked step is jitted anew by each SeedStack: compile it once.
    jax.config.update("jax_compilation_cache_dir", str(Path(tmp) / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    rows = measure(args.config, [s for s in args.loops.split(";") if s],
                   [s for s in args.sweep_loops.split(";") if s], args.sweep_seeds, args.rounds,
                   Path(tmp))
  result = {"date": datetime.date.today().isoformat(), "commit": bench_commit(),
            "config": args.config, "overrides": BASE, "machine": machine(load), "rows": rows,
            "command": " ".join(["python", "benchmarks/host_overhead.py", *sys.argv[1:]])}
  sys.stdout.write(render(result))
  if args.json:
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
  return 0


def bench_commit() -> str:
  import subprocess  # pylint: disable=import-outside-toplevel
  done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                        text=True, check=False)
  return done.stdout.strip() or "?"


if __name__ == "__main__":
  sys.exit(main())
