"""Train-step images/s with augmentation on the accelerator against the
previous host path (issue #18, item 4), side by side in one run.

  CNN_ARCHIVE_DIR=../shared/datasets python benchmarks/augment.py \
      --out benchmarks/results/augment_cpu.json --readme benchmarks/README.md
  python benchmarks/augment.py --render benchmarks/results/augment_cpu.json \
      --readme benchmarks/README.md [--check]

ResNet-20 v1 (configs/resnet20v1_cifar10.py), global batch 128, on the real
CIFAR-10 training images (`train[:45000]`, in memory): end-to-end training
throughput, i.e. consecutive train steps consuming a stream of batches from
the feed, as main.py's loop does (compile excluded; each timing ends with
`block_until_ready` on the state, so queued steps are counted). Candidates:

  host        the previous host path, commit 29950ba unchanged: tf.data pads,
              crops, flips and normalises on the host and feeds float32
              batches to its jitted step
  tfdata      now: tf.data feeds uint8 batches; pad-crop-flip and the
              normalisation run inside the jitted step (cnn/augment/)
  device      now: the split kept on the device (config.data.on_device)
  randaugment now, device feed: RandAugment (N=2, M=9) + pad-crop-flip
  trivial     now, device feed: TrivialAugmentWide + pad-crop-flip

Every candidate is the real `cnn.train.Experiment` of its code (its feed and
its jitted step, as main.py builds them) in its own worker process, so no two
share XLA's or tf.data's thread pools and each sleeps while another is timed.
The old code runs from a `git archive` of 29950ba extracted to a temporary
directory that is first on the worker's sys.path. Each round times every
candidate once, in turn; tables give medians and the ratio of medians to
`host`. A second table times the augmentation alone: the new jitted
`make_augment` on a batch of 128 already on the device, and the old tf.data
pipeline alone (the host's share of the previous path).
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- augment-table:begin -->", "<!-- augment-table:end -->"
OLD_COMMIT = "29950ba"  # the last commit with augmentation on the host (tf.data)
PROTOCOL = "@@ "  # prefix of a worker's answer lines (libraries may print to stdout)

# Every candidate: configs/resnet20v1_cifar10.py (paper protocol) with these fields.
COMMON = {"train_split": "train[:45000]", "validation_split": "", "test_split": "test[:500]",
          "data_source": "archives", "batch_size": 128}
RANDAUGMENT = {"auto_augment": "randaugment", "randaugment_num_ops": 2,
               "randaugment_magnitude": 9}
# key -> (code: "old" = commit OLD_COMMIT, "new" = this tree; config overrides; label)
CANDIDATES = {
    "host": ("old", {"data_on_device": False},
             f"previous ({OLD_COMMIT}): tf.data pad-crop-flip + normalise on the host, "
             "float32 batches"),
    "tfdata": ("new", {"data_on_device": False},
               "now: tf.data feed (uint8), pad-crop-flip + normalise in the step"),
    "device": ("new", {"data_on_device": True},
               "now: device feed, pad-crop-flip + normalise in the step"),
    "randaugment": ("new", {"data_on_device": True, **RANDAUGMENT},
                    "now: device feed, RandAugment (N=2, M=9) + pad-crop-flip in the step"),
    "trivial": ("new", {"data_on_device": True, "auto_augment": "trivialaugment_wide"},
                "now: device feed, TrivialAugmentWide + pad-crop-flip in the step"),
}
# The augmentation alone, batch of 128 on the device: key -> (config overrides, label).
AUGMENT_ALONE = {
    "pad_crop_flip": ({}, "pad-crop-flip + normalise (jitted make_augment)"),
    "randaugment": (RANDAUGMENT, "RandAugment (N=2, M=9) + pad-crop-flip + normalise"),
    "trivial": ({"auto_augment": "trivialaugment_wide"},
                "TrivialAugmentWide + pad-crop-flip + normalise"),
}
AUGMENT_SECONDS = 1.0  # each augment-alone timing lasts about this long
PIPELINE_BATCHES = 100  # per timing of the old tf.data pipeline alone


# ------------------------------------------------------------- in a worker

def experiment_config(overrides: dict):
  """configs/resnet20v1_cifar10.py of the tree first on sys.path, with
  COMMON and `overrides` (flat keys, as OLD_COMMIT's config has them; this
  tree's config has them in sections: cnn/settings.py)."""
  from configs import resnet20v1_cifar10  # pylint: disable=import-outside-toplevel
  config = resnet20v1_cifar10.get_config()
  try:
    from cnn import settings  # pylint: disable=import-outside-toplevel
  except ImportError:  # OLD_COMMIT
    config.update({**COMMON, **overrides})
    return config
  config.update_from_flattened_dict(
      {settings.renames().get(k, k): v for k, v in {**COMMON, **overrides}.items()})
  return config


def epochs_of_batches(exp):
  """The feed's global batches, epoch after epoch, without end."""
  epoch = 0
  while True:
    yield from exp.device_batches(epoch, 0)
    epoch += 1


class TrainLoop:
  """An Experiment's state, its jitted step and its batch stream: `timers`
  "step" (train steps) and, for a tf.data feed, "pipeline" (its host-side
  batches alone)."""

  def __init__(self, overrides: dict):
    import jax  # pylint: disable=import-outside-toplevel
    from cnn import train  # pylint: disable=import-outside-toplevel
    self._jax = jax
    self.exp = train.Experiment(experiment_config(overrides))
    self.state, self.sums = self.exp.initial_state, self.exp.zero_sums()
    self.batches = epochs_of_batches(self.exp)
    self.batch_size = self.exp.config.batch_size
    start = time.perf_counter()
    self.run(1)  # traces and compiles
    self.compile_s = time.perf_counter() - start
    self.run(3)
    self.host_batches = None

  def run(self, steps: int) -> None:
    for _ in range(steps):
      self.batch = next(self.batches)
      self.state, self.sums, _ = self.exp.train_step(self.state, self.sums, self.batch)
    self._jax.block_until_ready((self.state, self.sums))

  def step_images_per_s(self, steps: int) -> float:
    start = time.perf_counter()
    self.run(steps)
    return self.batch_size * steps / (time.perf_counter() - start)

  def pipeline_images_per_s(self, batches: int) -> float:
    """The host-side (tf.data) batches alone, no step."""
    if self.host_batches is None:
      self.host_batches = (b for epoch in range(10**6)
                           for b in self.exp.train_batches(epoch, 0))
      next(self.host_batches)  # tf.data start-up
    start = time.perf_counter()
    for _ in range(batches):
      next(self.host_batches)
    return self.batch_size * batches / (time.perf_counter() - start)

  def info(self) -> dict:
    image = self.batch["image"]
    return {"compile_s": round(self.compile_s, 2), "steps_per_epoch": self.exp.steps_per_epoch,
            "batch_image_dtype": str(image.dtype), "batch_image_bytes": int(image.nbytes)}

  def timers(self) -> dict:
    timers = {"step": self.step_images_per_s}
    if not self.exp.config.data.on_device:
      timers["pipeline"] = self.pipeline_images_per_s
    return timers


class AugmentAlone:
  """Jitted `make_augment` of each AUGMENT_ALONE entry on real CIFAR-10
  batches of 128 already on the device; a fresh key per call."""

  def __init__(self, batch_size: int = 128):
    import jax  # pylint: disable=import-outside-toplevel
    from cnn import datasets  # pylint: disable=import-outside-toplevel
    from cnn.augment import make_augment, step_key  # pylint: disable=import-outside-toplevel
    self._jax, self.batch_size, self._key = jax, batch_size, step_key
    spec = datasets.get_spec("cifar10")
    source = datasets.open_source(spec, None, datasets.resolve_archive_dir(""), "archives")
    images, labels = source.load_split(f"train[:{8 * batch_size}]")
    self.batches = [(jax.device_put(images[i:i + batch_size]),
                     jax.device_put(labels[i:i + batch_size]))
                    for i in range(0, len(images), batch_size)]
    self.calls = 0
    self.fns, self.compile_s, self.n_calls = {}, {}, {}
    for key, (overrides, _) in AUGMENT_ALONE.items():
      fn = jax.jit(make_augment(experiment_config(overrides).augment, spec))
      start = time.perf_counter()
      self._run(fn, 1)
      self.compile_s[key] = round(time.perf_counter() - start, 2)
      start = time.perf_counter()
      self._run(fn, 3)
      per_call = (time.perf_counter() - start) / 3
      self.fns[key] = fn
      self.n_calls[key] = max(5, math.ceil(AUGMENT_SECONDS / per_call))

  def _run(self, fn, calls: int) -> None:
    outs = []
    for _ in range(calls):
      images, labels = self.batches[self.calls % len(self.batches)]
      outs.append(fn(images, labels, self._key(0, 0, self.calls))["image"])
      self.calls += 1
    self._jax.block_until_ready(outs)

  def images_per_s(self, key: str, calls: int) -> float:
    start = time.perf_counter()
    self._run(self.fns[key], calls)
    return self.batch_size * calls / (time.perf_counter() - start)

  def info(self) -> dict:
    import jax  # pylint: disable=import-outside-toplevel
    return {"compile_s": self.compile_s, "calls": self.n_calls, "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d.device_kind) for d in jax.devices()]}

  def timers(self) -> dict:
    return {key: (lambda n, k=key: self.images_per_s(k, n)) for key in self.fns}


def answer(value) -> None:
  print(PROTOCOL + json.dumps(value), flush=True)


def serve(spec: dict) -> None:
  """The worker: builds its candidate, answers `info`, then one images/s per
  request line `TIMER COUNT` on stdin, until stdin closes."""
  here = {str(ROOT), str(ROOT / "benchmarks")}  # the old tree must not fall back on this one
  sys.path[:] = [spec["code_root"], *(p for p in sys.path if p not in here)]
  os.chdir(spec["code_root"])
  worker = AugmentAlone() if spec["kind"] == "augment" else TrainLoop(spec["overrides"])
  timers = worker.timers()
  answer(worker.info())
  for line in sys.stdin:
    name, count = line.split()
    answer(timers[name](int(count)))


# ------------------------------------------------------------- in the parent

class Worker:
  """`serve` in a child process (this file with --worker)."""

  def __init__(self, kind: str, code_root: Path, overrides: dict, env: dict):
    spec = json.dumps({"kind": kind, "code_root": str(code_root), "overrides": overrides})
    self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", spec],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=env)
    self.info = self._read()

  def _read(self):
    for line in self.proc.stdout:
      if line.startswith(PROTOCOL):
        return json.loads(line[len(PROTOCOL):])
    raise RuntimeError(f"a benchmark worker died (exit status {self.proc.wait()}); "
                       "its error is above")

  def images_per_s(self, timer: str, count: int) -> float:
    self.proc.stdin.write(f"{timer} {count}\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


def extract_commit(commit: str, into: Path) -> Path:
  """The tree of `commit` (git archive), unchanged, under `into`."""
  archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True,
                           check=True).stdout
  subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
  return into


def worker_env(platform_name: str) -> dict:
  return {**os.environ, "JAX_PLATFORMS": platform_name, "TF_CPP_MIN_LOG_LEVEL": "2",
          "PYTHONUNBUFFERED": "1"}


def summarise(samples: list[float]) -> dict:
  return {"images_per_s": round(statistics.median(samples), 1),
          "samples": [round(s, 1) for s in samples]}


def measure(candidates: list[str], rounds: int, steps: int, platform_name: str) -> dict:
  """Starts the workers, alternates `rounds` rounds, returns the rows."""
  from benchmarks.run import alternate  # pylint: disable=import-outside-toplevel
  env = worker_env(platform_name)
  workers: dict[str, Worker] = {}
  with tempfile.TemporaryDirectory(prefix="augment-bench-") as tmp:
    old_root = extract_commit(OLD_COMMIT, Path(tmp)) if "host" in candidates else None
    try:
      for key in candidates:
        code, overrides, _ = CANDIDATES[key]
        print(f"building {key} ...", file=sys.stderr, flush=True)
        workers[key] = Worker("train", old_root if code == "old" else ROOT, overrides, env)
      print("building augment-alone ...", file=sys.stderr, flush=True)
      alone = Worker("augment", ROOT, {}, env)
      workers["augment"] = alone
      timers = {f"step/{key}": (lambda w=workers[key]: w.images_per_s("step", steps))
                for key in candidates}
      if "host" in candidates:
        timers["pipeline/host"] = lambda: workers["host"].images_per_s("pipeline",
                                                                       PIPELINE_BATCHES)
      for key, calls in alone.info["calls"].items():
        timers[f"augment/{key}"] = lambda k=key, n=calls: alone.images_per_s(k, n)
      samples = alternate(timers, rounds)
    finally:
      for worker in workers.values():
        worker.close()
  return {"samples": samples, "info": {key: w.info for key, w in workers.items()}}


def build_result(measured: dict, candidates: list[str]) -> dict:
  """Medians, ratios to `host` (or to the first candidate) and the
  augmentation's share of a device-feed step."""
  samples, info = measured["samples"], measured["info"]
  reference = "host" if "host" in candidates else candidates[0]
  ref_median = statistics.median(samples[f"step/{reference}"])
  rows = []
  for key in candidates:
    code, overrides, label = CANDIDATES[key]
    row = {"key": key, "label": label, "code": OLD_COMMIT if code == "old" else "working tree",
           "overrides": overrides, **summarise(samples[f"step/{key}"]), **info[key]}
    row["vs_reference"] = round(row["images_per_s"] / ref_median, 3)
    rows.append(row)
  step_ms = {r["key"]: 1000 * 128 / r["images_per_s"] for r in rows}
  base_step = step_ms.get("device")
  alone = []
  if "pipeline/host" in samples:
    alone.append({"key": "host_pipeline", "label": f"previous ({OLD_COMMIT}) tf.data pipeline "
                  "alone: gather + pad-crop-flip + normalise, float32, on the host",
                  "calls": PIPELINE_BATCHES, **summarise(samples["pipeline/host"])})
  for key, (overrides, label) in AUGMENT_ALONE.items():
    if f"augment/{key}" in samples:
      alone.append({"key": key, "label": label, "overrides": overrides,
                    "calls": info["augment"]["calls"][key],
                    "compile_s": info["augment"]["compile_s"][key],
                    **summarise(samples[f"augment/{key}"])})
  for row in alone:
    row["ms_per_batch"] = round(1000 * 128 / row["images_per_s"], 1)
    if base_step:
      row["vs_device_step"] = round(row["ms_per_batch"] / base_step, 3)
  return {"reference": reference, "train_step": rows, "augment_alone": alone,
          "augment_worker": info["augment"]}


def code_version() -> dict:
  """The commit and the augmentation sources measured (they may be uncommitted)."""
  head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True, check=True).stdout.strip()
  dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "cnn/augment"],
                         capture_output=True, text=True, check=True).stdout.split("\n")
  files = sorted((ROOT / "cnn/augment").glob("*.py"))
  return {"head": head, "uncommitted": [line[3:] for line in dirty if line.strip()],
          "augment_sha256": {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16]
                             for f in files}}


def machine(augment_info: dict) -> dict:
  """run.py's machine fields, with JAX's as the workers saw them (this process
  does not import JAX)."""
  from benchmarks.run import cpu_model  # pylint: disable=import-outside-toplevel
  return {"cpu": cpu_model(), "processor": platform.processor(), "cores": os.cpu_count(),
          "jax": augment_info["jax"], "backend": augment_info["backend"],
          "devices": augment_info["devices"], "python": platform.python_version()}


# ---------------------------------------------------------------- rendering

def spread(samples: list[float]) -> str:
  """The lowest and highest sample: how noisy the machine was."""
  return f"{min(samples):.0f}-{max(samples):.0f}"


def render(result: dict) -> str:
  """The README block of a saved run."""
  m = result["machine"]
  ref = result["reference"]
  load = ", ".join(f"{x:.2f}" for x in result["load_average_at_start"])
  out = [f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, backend "
         f"{m['backend']}), jax {m['jax']}; ResNet-20 v1, global batch 128, CIFAR-10 "
         f"train[:45000]; medians of {result['rounds']} alternating rounds of "
         f"{result['steps_per_timing']} consecutive steps per candidate; load average at start "
         f"{load}.", "",
         f"| train step, fed from a stream of batches | images/s | range | vs {ref} | "
         "batch on the wire | compile s |", "|---|---:|---:|---:|---|---:|"]
  for r in result["train_step"]:
    wire = f"{r['batch_image_dtype']}, {r['batch_image_bytes'] / 1024:.0f} KiB"
    out.append(f"| {r['label']} | {r['images_per_s']:.0f} | {spread(r['samples'])} | "
               f"{r['vs_reference']:.2f}x | {wire} | {r['compile_s']:.1f} |")
  if result["augment_alone"]:
    out += ["", "| augmentation alone, batch of 128 | images/s | range | ms per batch | "
            "share of a device-feed step |", "|---|---:|---:|---:|---:|"]
    for r in result["augment_alone"]:
      share = f"{r['vs_device_step']:.1%}" if "vs_device_step" in r else ""
      out.append(f"| {r['label']} | {r['images_per_s']:.0f} | {spread(r['samples'])} | "
                 f"{r['ms_per_batch']:.1f} | {share} |")
  return "\n".join(out) + "\n"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=Path, help="write the JSON here")
  parser.add_argument("--readme", type=Path, help="rewrite this README's augment block")
  parser.add_argument("--render", type=Path, help="only render this JSON (with --readme)")
  parser.add_argument("--check", action="store_true",
                      help="with --render and --readme: fail if the README is out of date")
  # Many short turns rather than a few long ones: on a shared machine the slow
  # spells last tens of seconds, and short turns spread them over all candidates.
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--steps", type=int, default=10, help="train steps per timing")
  parser.add_argument("--candidates", default=",".join(CANDIDATES))
  parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS of the workers")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    serve(json.loads(args.worker))
    return 0
  from benchmarks.run import publish, rewrite_readme  # pylint: disable=import-outside-toplevel
  if args.render:
    return publish(render(json.loads(args.render.read_text())), args.readme, BEGIN, END,
                   check=args.check, what="augment",
                   fix=f"python benchmarks/augment.py --render {args.render} "
                       f"--readme {args.readme}")

  candidates = args.candidates.split(",")
  unknown = set(candidates) - set(CANDIDATES)
  if unknown:
    parser.error(f"unknown candidates {sorted(unknown)}; valid: {', '.join(CANDIDATES)}")
  load = os.getloadavg()
  start = time.perf_counter()
  version = code_version()  # before the workers import it
  measured = measure(candidates, args.rounds, args.steps, args.platform)
  result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
            "machine": machine(measured["info"]["augment"]),
            "load_average_at_start": [round(x, 2) for x in load],
            "rounds": args.rounds, "steps_per_timing": args.steps, "batch_size": 128,
            "model": "resnet20_v1", "config": "configs/resnet20v1_cifar10.py",
            "common_overrides": COMMON, "old_commit": OLD_COMMIT, "code": version,
            **build_result(measured, candidates)}
  result["wall_s"] = round(time.perf_counter() - start, 1)
  table = render(result)
  print(table)
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
  if args.readme:
    rewrite_readme(args.readme, table, BEGIN, END)
  return 0


if __name__ == "__main__":
  sys.exit(main())
