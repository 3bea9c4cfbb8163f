"""The benchmark suite: our train step against PyTorch's, the input pipeline,
a CIFAR-10 epoch end to end with its peak memory, and time-to-accuracy.

  pip install -r requirements-bench.txt
  CNN_ARCHIVE_DIR=../shared/datasets python benchmarks/run.py \
      --out benchmarks/results/cpu.json --baseline benchmarks/baseline_cpu.json \
      --readme docs/performance.md

Machines are noisy, so every comparison is made in one run: the candidates of
a table take turns (one round = each candidate once), and the table gives the
median over `--repeats` rounds and the ratio of medians. PyTorch runs in a
worker process (benchmarks/torch_twins.py) that sleeps while JAX is timed.

1. Train step, images/s, fixed random batch already on the device: ResNet-20,
   ResNet-56 and VGG-16 (fp32, and the variants we tried) vs their PyTorch twins.
2. Input pipeline alone: CIFAR-10 train batches (tfds data cached in memory,
   pad-crop-flip, normalisation) vs the images/s the ResNet-20 step consumes.
3. End to end: `main.py` trains one CIFAR-10 epoch of ResNet-20 (45k images,
   then the 5k validation images), and reports epoch time and the process's
   peak resident memory (RSS).
4. Time-to-accuracy: `main.py` on a short MNIST config (ResNet-8, 16,384
   training images, 4 epochs), wall seconds of training until the validation
   accuracy first reaches the threshold (compile time reported apart).

`--baseline FILE` compares with a saved JSON and exits 1 if a train-step
ratio vs PyTorch, or the pipeline's images/s, fell by more than 10%.
`--render FILE --readme docs/performance.md` only rewrites the Performance
block of that file from a saved JSON; `--check` fails if that block is out of
date.
"""
import argparse
import contextlib
import functools
import ctypes
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- performance:begin -->", "<!-- performance:end -->"
REGRESSION = 0.9  # a ratio below this fraction of the baseline's is a regression

# (model, label, dtype, layer options): JAX candidates; PyTorch twins (fp32, and bf16 under
# autocast) are added per model. "JAX fp32" is the default model (the per-shape conv rule
# with oneDNN's convolutions where installed, the fusion barrier); the others switch one
# of its `config.layers` settings (model_fn.build, cnn/kernels/) off, to show what each is worth.
BUILTIN_CONVS = {"conv_algorithm": "builtin"}  # the rule without oneDNN
XLA_CONVS = {"conv_algorithm": "xla"}
STEP_CANDIDATES = {
    "resnet20": [("resnet20_v1", "JAX fp32", "float32", {}),
                 ("resnet20_v1", "JAX fp32, built-in conv rule (no oneDNN)", "float32",
                  BUILTIN_CONVS),
                 ("resnet20_v1", "JAX fp32, XLA convs only", "float32", XLA_CONVS),
                 ("resnet20_v1", "JAX bf16 compute", "bfloat16", {}),
                 ("resnet20_v2", "JAX fp32, v2 (pre-activation)", "float32", {})],
    "resnet56": [("resnet56_v1", "JAX fp32", "float32", {}),
                 ("resnet56_v1", "JAX fp32, built-in conv rule (no oneDNN)", "float32",
                  BUILTIN_CONVS),
                 ("resnet56_v1", "JAX bf16 compute", "bfloat16", {})],
    "vgg16": [("vgg16", "JAX fp32", "float32", {}),
              ("vgg16", "JAX fp32, built-in conv rule (no oneDNN)", "float32", BUILTIN_CONVS),
              ("vgg16", "JAX bf16 compute", "bfloat16", {})],
}
TORCH_TWINS = {"PyTorch fp32": "float32", "PyTorch bf16 autocast": "bfloat16"}
STEPS = {"resnet20": 10, "resnet56": 4, "vgg16": 3}  # per timing: about 2-6 s each
MNIST_THRESHOLD = 0.97


class JaxStepper:
  """Our real train step (cnn.train.train_step, SGD + Nesterov as the twin)
  on one fixed batch; the state is threaded through, the step donates it."""

  def __init__(self, model_name: str, dtype: str, batch_size: int, layer_options: dict):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from cnn import augment, datasets, model_fn, optim  # pylint: disable=import-outside-toplevel
    from cnn import train  # pylint: disable=import-outside-toplevel
    from configs import default  # pylint: disable=import-outside-toplevel
    self._jax = jax
    config = default.get_config()
    config.optim.nesterov, config.optim.weight_decay = True, 5e-4
    config.layers.update({"dtype": dtype, **layer_options})
    model = model_fn.build(model_name, {}, config.layers, num_classes=10)
    tx = optim.make_optimizer(config.optim, config.schedule,
                              learning_rate=config.learning_rate,
                              num_epochs=config.num_epochs, steps_per_epoch=100)
    self.state = train.create_train_state(model, tx, jax.random.key(0), (32, 32, 3))
    self.sums = train.zero_sums()
    rng = np.random.default_rng(0)
    self.batch = {"image": jnp.asarray(rng.integers(0, 256, (batch_size, 32, 32, 3)), jnp.uint8),
                  "label": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)}
    config.augment.geometry = "none"  # the twin trains on a fixed batch: normalised only
    step = functools.partial(train.train_step, augment=augment.make_augment(
        config.augment, datasets.get_spec("cifar10")), seed=0, steps_per_epoch=100,
                             dropout_key=jax.random.key(1), label_smoothing=0.0)
    self._step = jax.jit(step, donate_argnums=(0, 1))
    self.batch_size = batch_size
    start = time.perf_counter()  # the first call traces and compiles
    self.run(1)
    self.compile_s = time.perf_counter() - start
    self.run(2)

  def run(self, steps: int) -> None:
    for _ in range(steps):
      self.state, self.sums, _ = self._step(self.state, self.sums, self.batch)
    self._jax.block_until_ready(self.state.params)

  def images_per_s(self, steps: int) -> float:
    start = time.perf_counter()
    self.run(steps)
    return self.batch_size * steps / (time.perf_counter() - start)


class TorchWorker:
  """benchmarks/torch_twins.py in a child process."""

  def __init__(self):
    self.proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks/torch_twins.py")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def images_per_s(self, model: str, batch_size: int, steps: int, dtype: str = "float32") -> float:
    self.proc.stdin.write(f"{model} {batch_size} {steps} {dtype}\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError("the PyTorch worker died; is torch installed (requirements-bench.txt)?")
    return float(line)

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


def alternate(timers: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
  """`repeats` rounds, each calling every timer once in turn (so a slow spell
  of the machine hits all candidates alike); the samples per label."""
  samples = {label: [] for label in timers}
  for _ in range(repeats):
    for label, timer in timers.items():
      samples[label].append(timer())
  return samples


def bench_train_steps(models: list[str], batch_size: int, repeats: int) -> list[dict]:
  torch_worker = TorchWorker()
  rows = []
  try:
    for model in models:
      steppers = [(label, JaxStepper(name, dtype, batch_size, options), name)
                  for name, label, dtype, options in STEP_CANDIDATES[model]]
      for dtype in TORCH_TWINS.values():
        torch_worker.images_per_s(model, batch_size, 1, dtype)  # build and warm up
      timers = {label: (lambda s=stepper: s.images_per_s(STEPS[model]))
                for label, stepper, _ in steppers}
      for label, dtype in TORCH_TWINS.items():
        timers[label] = functools.partial(torch_worker.images_per_s, model, batch_size,
                                          STEPS[model], dtype)
      samples = alternate(timers, repeats)
      torch_median = statistics.median(samples["PyTorch fp32"])
      for label, stepper, name in [*steppers, *((t, None, model) for t in TORCH_TWINS)]:
        median = statistics.median(samples[label])
        rows.append({"model": model, "variant": label, "registered_name": name,
                     "batch_size": batch_size, "images_per_s": round(median, 1),
                     "samples": [round(s, 1) for s in samples[label]],
                     "vs_torch": round(median / torch_median, 3),
                     "compile_s": round(stepper.compile_s, 2) if stepper else None})
  finally:
    torch_worker.close()
  return rows


def bench_input_pipeline(step_images_per_s: float, batch_size: int, repeats: int,
                         batches: int) -> dict:
  from cnn import batching, datasets, input_pipeline  # pylint: disable=import-outside-toplevel
  spec = datasets.get_spec("cifar10")
  source = datasets.open_source(spec, None, datasets.resolve_archive_dir(""), "tfds")
  images, labels = source.load_split("train[:45000]")
  shard = batching.Shard(batch_size, 0, 1)
  samples = []
  for epoch in range(repeats):
    iterator = input_pipeline.train_batches(images, labels, shard=shard, seed=0, epoch=epoch)
    next(iterator)  # tf.data start-up
    start = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    samples.append(batches * batch_size / (time.perf_counter() - start))
  median = statistics.median(samples)
  return {"images_per_s": round(median, 1), "samples": [round(s, 1) for s in samples],
          "train_step_images_per_s": step_images_per_s,
          "vs_train_step": round(median / step_images_per_s, 2), "batches": batches}


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies


def _term_with_parent(libc: ctypes.CDLL) -> Callable[[], None]:
  """For Popen's preexec_fn (Linux): the child gets SIGTERM when its parent
  dies, SIGKILL included, so an orphaned main.py checkpoints and exits
  instead of training on, holding the workdir's lock."""
  return lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(command: list[str], log: Path | None = None, stop_at: float | None = None,
              kill_at: float | None = None, stop_when: Callable[[], bool] | None = None,
              **popen) -> tuple[int, float]:
  """Runs `command` to its end; returns (exit status, negative for a signal;
  peak RSS in MiB). Its output is appended to `log` if given. At `stop_at`
  (a time.monotonic() value), or once `stop_when()` (checked every second)
  is true, it gets SIGTERM (SIGKILL 15 s later at most), at `kill_at`
  SIGKILL. It runs in its own session (a Ctrl-C reaches only us: we pass
  SIGTERM on and wait)."""
  libc = ctypes.CDLL(None) if sys.platform == "linux" else None
  with open(log, "a", encoding="utf-8") if log else contextlib.nullcontext() as out:
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if log else None,
                            start_new_session=True,
                            preexec_fn=_term_with_parent(libc) if libc else None, **popen)
    try:
      status, usage = _wait(proc, stop_at, kill_at, stop_when)
    except BaseException:  # KeyboardInterrupt, SIGTERM made one: let the child save and exit
      proc.terminate()
      status, usage = _wait(proc, None, time.monotonic() + 120)
      raise
  return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024


def _wait(proc: subprocess.Popen, stop_at: float | None, kill_at: float | None,
          stop_when: Callable[[], bool] | None = None):
  """(wait status, resource usage) of `proc`, signalled at the deadlines."""
  checked = time.monotonic()
  while True:
    if stop_when is not None and time.monotonic() - checked >= 1:
      checked = time.monotonic()
      if stop_when():
        stop_at, stop_when = checked, None
        kill_at = min(kill_at, checked + 15) if kill_at is not None else checked + 15
    if stop_at is None and kill_at is None and stop_when is None:
      _, status, usage = os.wait4(proc.pid, 0)
      break
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid:
      break
    now = time.monotonic()
    if kill_at is not None and now >= kill_at:
      proc.kill()
      stop_at = kill_at = None
    elif stop_at is not None and now >= stop_at:
      proc.terminate()
      stop_at = None
    time.sleep(0.1)
  proc.returncode = os.waitstatus_to_exitcode(status)
  return status, usage


class Stopped(Exception):
  """main.py ended without results.json: stopped by SIGTERM (it saved a
  checkpoint of its step) or killed; rerunning the same command resumes."""

  def __init__(self, returncode: int, wall: float, rss: float):
    super().__init__(f"main.py stopped (exit status {returncode}) before it finished")
    self.returncode, self.wall, self.rss = returncode, wall, rss


class MainFailed(RuntimeError):
  """main.py failed; `message` is its `error: ...` line when its log was kept."""

  def __init__(self, config: str, returncode: int, message: str | None):
    super().__init__(f"main.py {config} failed with exit code {returncode}"
                     + (f": {message}" if message else ""))
    self.returncode, self.message = returncode, message


def main_command(config: str, overrides: list[str], workdir: Path) -> list[str]:
  return [sys.executable, str(ROOT / "main.py"), f"--config={config}", f"--workdir={workdir}",
          *overrides]


def last_error(log: Path | None) -> str | None:
  """The last `error: ...` line of a log, without the prefix."""
  lines = log.read_text(errors="replace").splitlines() if log and log.exists() else []
  found = [line for line in lines if line.startswith("error: ")]
  return found[-1][len("error: "):] if found else None


def run_main(config: str, overrides: list[str], workdir: Path, log: Path | None = None,
             stop_at: float | None = None, kill_at: float | None = None
             ) -> tuple[dict, float, float]:
  """Runs main.py; returns (results.json, wall seconds, peak RSS in MiB).
  `log`, `stop_at`, `kill_at`: as `supervise`. Raises Stopped when it ended
  before writing results.json (SIGTERM saves a checkpoint: rerun to resume),
  MainFailed when it failed."""
  start = time.perf_counter()
  code, rss = supervise(main_command(config, overrides, workdir), log, stop_at, kill_at, cwd=ROOT)
  wall = time.perf_counter() - start
  results = workdir / "results.json"
  if code == 0 and results.exists():
    return json.loads(results.read_text()), wall, rss
  if code in (0, -signal.SIGTERM, -signal.SIGKILL):
    raise Stopped(code, wall, rss)
  raise MainFailed(config, code, last_error(log))


def bench_cifar_epoch(train_split: str) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    results, wall, rss = run_main(
        "configs/resnet20v1_cifar10.py",
        ["--config.num_epochs=1", f"--config.data.train_split={train_split}"],
        Path(tmp) / "w")
    timing = [json.loads(line) for line in (Path(tmp) / "w/timing.jsonl").read_text().splitlines()]
  return {"config": "configs/resnet20v1_cifar10.py", "train_split": train_split,
          "epoch_time_s": round(timing[0]["epoch_time_s"], 1),
          "train_images_per_s": round(timing[0]["train_images_per_s"], 1),
          "compile_time_s": results["compile_time_s"], "process_wall_s": round(wall, 1),
          "peak_rss_mib": round(rss), "test_accuracy": results["test_accuracy"]}


def bench_time_to_accuracy(threshold: float) -> dict:
  overrides = [
      "--config.data.train_split=train[:16384]", "--config.data.validation_split=train[55000:]",
      "--config.num_epochs=4", "--config.batch_size=128"
  ]
  with tempfile.TemporaryDirectory() as tmp:
    results, wall, _ = run_main("configs/tiny_mnist.py", overrides, Path(tmp) / "w")
    read = lambda name: [json.loads(line) for line in  # noqa: E731
                         (Path(tmp) / "w" / name).read_text().splitlines()]
    metrics, timing = read("metrics.jsonl"), read("timing.jsonl")
  elapsed, reached = 0.0, None
  for record, times in zip(metrics, timing):
    elapsed += times["epoch_time_s"]
    if reached is None and record["val_accuracy"] >= threshold:
      reached = {"epoch": record["epoch"], "seconds": round(elapsed, 1)}
  return {"config": "configs/tiny_mnist.py " + " ".join(overrides), "threshold": threshold,
          "reached": reached, "val_accuracy": [round(m["val_accuracy"], 4) for m in metrics],
          "epoch_time_s": [round(t["epoch_time_s"], 1) for t in timing],
          "compile_time_s": results["compile_time_s"], "process_wall_s": round(wall, 1),
          "test_accuracy": results["test_accuracy"]}


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
  return next((line.split(":", 1)[1].strip() for line in
               Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
              platform.processor())


def machine() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  cpu = cpu_model()
  probe = ("import json, torch; print(json.dumps([torch.__version__, torch.cuda.get_device_name(0)"
           " if torch.cuda.is_available() else None]))")
  try:  # in a child: importing torch here would put its threads beside JAX's
    torch_version, torch_device = json.loads(subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
  except subprocess.CalledProcessError:
    torch_version = torch_device = None
  return {"cpu": cpu, "cores": os.cpu_count(), "backend": jax.default_backend(),
          "devices": [str(d.device_kind) for d in jax.devices()], "jax": jax.__version__,
          "jaxlib": jaxlib_version(), "torch": torch_version, "torch_device": torch_device,
          "python": platform.python_version()}


def jaxlib_version() -> str:
  import jaxlib  # pylint: disable=import-outside-toplevel
  return getattr(jaxlib, "__version__", None) or jaxlib.version.__version__


# ---------------------------------------------------------------- rendering

def render(result: dict, baseline: dict | None = None) -> str:
  """The markdown tables of a result (and the ratio to a baseline)."""
  base = {(r["model"], r["variant"]): r for r in (baseline or {}).get("train_step", [])}
  m = result["machine"]
  out = [f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, backend "
         f"{m['backend']}), jax {m['jax']}, torch {m['torch']}; medians of "
         f"{result['repeats']} alternating rounds.", "",
         "| model | variant | images/s | vs PyTorch | compile s |"
         + (" vs baseline |" if baseline else ""),
         "|---|---|---:|---:|---:|" + ("---:|" if baseline else "")]
  for r in result["train_step"]:
    row = (f"| {r['model']} | {r['variant']} | {r['images_per_s']:.0f} | {r['vs_torch']:.2f}x | "
           f"{'' if r['compile_s'] is None else r['compile_s']} |")
    if baseline:
      old = base.get((r["model"], r["variant"]))
      row += f" {r['vs_torch'] / old['vs_torch']:.2f} |" if old else " new |"
    out.append(row)
  pipe = result.get("input_pipeline")
  if pipe:
    out += ["", "| input pipeline (CIFAR-10, pad-crop-flip, batch 128) | images/s | "
            "vs ResNet-20 step |", "|---|---:|---:|",
            f"| tfds in memory + tf.data | {pipe['images_per_s']:.0f} | "
            f"{pipe['vs_train_step']:.1f}x |"]
  e2e, tta = result.get("cifar_epoch"), result.get("time_to_accuracy")
  if e2e or tta:
    out += ["", "| end to end | result |", "|---|---|"]
  if e2e:
    out += [f"| ResNet-20 v1, one CIFAR-10 epoch ({e2e['train_split']}, then 5k validation) | "
            f"{e2e['epoch_time_s']:.0f} s ({e2e['train_images_per_s']:.0f} train images/s), "
            f"compile {e2e['compile_time_s']:.1f} s |",
            f"| peak host memory (RSS) of that run | {e2e['peak_rss_mib']} MiB |"]
  if tta:
    reached = (f"{tta['reached']['seconds']:.0f} s (epoch {tta['reached']['epoch']})"
               if tta["reached"] else "not reached")
    out += [f"| time to {tta['threshold']:.0%} MNIST validation accuracy (ResNet-8, 16k "
            f"images/epoch) | {reached}, compile {tta['compile_time_s']:.1f} s apart |"]
  return "\n".join(out) + "\n"


def regressions(result: dict, baseline: dict) -> list[str]:
  base = {(r["model"], r["variant"]): r for r in baseline.get("train_step", [])}
  found = [f"{r['model']} {r['variant']}: {r['vs_torch']:.2f}x PyTorch, baseline "
           f"{base[key]['vs_torch']:.2f}x"
           for r in result["train_step"] if (key := (r["model"], r["variant"])) in base
           and r["vs_torch"] < REGRESSION * base[key]["vs_torch"]]
  old, new = baseline.get("input_pipeline"), result.get("input_pipeline")
  if old and new and new["images_per_s"] < REGRESSION * old["images_per_s"]:
    found.append(f"input pipeline: {new['images_per_s']:.0f} images/s, baseline "
                 f"{old['images_per_s']:.0f}")
  return found


def rewrite_readme(readme: Path, table: str, begin: str = BEGIN, end: str = END) -> None:
  """Replaces a README's block between the markers (the results table's mechanism)."""
  from cnn.report import results_table  # pylint: disable=import-outside-toplevel
  results_table.rewrite_readme(readme, table, begin, end)


def readme_block(readme: Path, begin: str = BEGIN, end: str = END) -> str:
  return readme.read_text().split(begin, 1)[1].split(end, 1)[0].lstrip("\n")


def publish(table: str, readme: Path | None, begin: str, end: str, *, check: bool,
            what: str, fix: str) -> int:
  """The end of every benchmark's `--render`: with `check`, exit status 0 if
  the `what` block (between the markers) of the markdown file `readme` is
  `table`, else 1 and the command `fix` that rewrites it; otherwise rewrites
  the block (if `readme`) and prints the table."""
  if check:
    if begin not in readme.read_text():  # e.g. a block that moved to another file
      print(f"{readme} has no {what} block ({begin} ... {end})")
      return 1
    if readme_block(readme, begin, end) != table:
      print(f"{readme} {what} block is out of date: run {fix}")
      return 1
    return 0
  if readme:
    rewrite_readme(readme, table, begin, end)
  print(table)
  return 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=Path, help="write the JSON here")
  parser.add_argument("--baseline", type=Path, help="compare with this JSON")
  parser.add_argument("--readme", type=Path,
                      help="rewrite the Performance block of this file (docs/performance.md)")
  parser.add_argument("--render", type=Path, help="only render this JSON (with --readme)")
  parser.add_argument("--check", action="store_true",
                      help="with --render and --readme: fail if that block is out of date")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--models", default="resnet20,resnet56,vgg16")
  parser.add_argument("--quick", action="store_true",
                      help="a smoke run: 2 repeats, ResNet-20 only, a 6,400-image CIFAR epoch")
  args = parser.parse_args()
  if args.render:
    return publish(render(json.loads(args.render.read_text())), args.readme, BEGIN, END,
                   check=args.check, what="Performance",
                   fix=f"python benchmarks/run.py --render {args.render} --readme {args.readme}")

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from cnn import backend  # pylint: disable=import-outside-toplevel
  backend.retain_host_memory()  # as main.py does, before JAX starts (cnn/backend.py)
  repeats = 2 if args.quick else args.repeats
  models = ["resnet20"] if args.quick else args.models.split(",")
  result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
            "machine": machine(), "repeats": repeats}
  result["train_step"] = bench_train_steps(models, args.batch_size, repeats)
  step = next(r for r in result["train_step"]
              if r["model"] == "resnet20" and r["variant"] == "JAX fp32")["images_per_s"]
  result["input_pipeline"] = bench_input_pipeline(step, args.batch_size, repeats, batches=300)
  result["cifar_epoch"] = bench_cifar_epoch("train[:6400]" if args.quick else "train[:45000]")
  result["time_to_accuracy"] = bench_time_to_accuracy(MNIST_THRESHOLD)
  baseline = json.loads(args.baseline.read_text()) if args.baseline else None
  print(render(result, baseline))
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
  if args.readme:
    rewrite_readme(args.readme, render(result))
  if baseline and (found := regressions(result, baseline)):
    print("REGRESSION (more than 10% below the baseline):\n  " + "\n  ".join(found))
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
