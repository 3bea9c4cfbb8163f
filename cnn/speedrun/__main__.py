"""`python -m cnn.speedrun`: N seeds of the speedrun back to back on one device.

  CNN_ARCHIVE_DIR=../shared/datasets python -m cnn.speedrun --seeds 25 --out speedrun.json

Prints and writes (--out) each seed's test accuracy and training seconds, their
mean and standard deviation, the compile seconds (before any clock starts) and
the device; with --breakdown and --profile, where one more run's time goes (its
phases; its kernels' device time). At CPU size, e.g.:
  python -m cnn.speedrun --seeds 2 --train-images 4000 --test-images 1000 --epochs 1 \\
      --batch-size 500 --widths 16,32,32
"""
import argparse
import datetime
import json
import os
import platform
import sys
import tempfile

import jax

from cnn import datasets
from cnn.errors import UserError
from cnn.speedrun import summary
from cnn.speedrun.train import Recipe, Speedrun


def load(train_images: int, test_images: int) -> tuple[tuple, tuple]:
  """CIFAR-10's training and test splits (the first N of each if given)."""
  source = datasets.open_source(datasets.get_spec("cifar10"), None,
                                datasets.resolve_archive_dir(""))
  train = source.load_split(f"train[:{train_images}]" if train_images else "train")
  test = source.load_split(f"test[:{test_images}]" if test_images else "test")
  return train, test


def write(result: dict, path: str | None) -> None:
  """`result` as JSON at `path` (--out), if given."""
  if path:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2, default=str)


def default_dtype(backend: str) -> str:
  """`--dtype auto`: airbench's float16 on a GPU; elsewhere a dtype the backend
  computes natively (a CPU has no fast float16: oneDNN's kernels take float32
  and bfloat16)."""
  return {"gpu": "float16", "tpu": "bfloat16"}.get(backend, "float32")


def parse_widths(text: str) -> tuple[int, ...]:
  """--widths: the three conv groups' channels, e.g. "64,256,256"."""
  try:
    widths = tuple(int(w) for w in text.split(","))
  except ValueError:
    widths = ()
  if len(widths) != len(Recipe.widths) or min(widths) < 1:
    raise UserError(f"--widths takes {len(Recipe.widths)} positive channel counts, one per conv "
                    f"group, e.g. --widths {','.join(map(str, Recipe.widths))}; not {text!r}")
  return widths


def traced(speedrun: Speedrun, seed: int) -> dict:
  """`Speedrun.profile` in a scratch folder; a profiler that cannot run here
  (no CUPTI, a trace it cannot read) is reported, not raised: the timed
  seeds are written already."""
  with tempfile.TemporaryDirectory(prefix="speedrun-trace-") as trace_dir:
    try:
      return speedrun.profile(seed, trace_dir)
    except Exception as e:  # pylint: disable=broad-except
      return {"seed": seed, "error": f"{type(e).__name__}: {e}"}


def host() -> str:
  """This machine's CPU and its cores (the device of a CPU run)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  except OSError:
    names = []
  return f"{names[0] if names else platform.processor() or 'unknown CPU'} " \
         f"({os.cpu_count()} cores)"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seeds", type=int, default=5, help="runs, seeds 0..N-1 (>= 1)")
  parser.add_argument("--out", help="write the runs and their summary here (JSON), after "
                      "every seed")
  parser.add_argument("--train-images", type=int, default=0, help="0 = all 50,000")
  parser.add_argument("--test-images", type=int, default=0, help="0 = all 10,000")
  parser.add_argument("--epochs", type=int, default=Recipe.epochs)
  parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
  parser.add_argument("--widths", default=",".join(map(str, Recipe.widths)))
  parser.add_argument("--dtype", default="auto",
                      choices=("auto", "float16", "bfloat16", "float32"),
                      help="compute dtype; auto: float16 on a GPU (airbench's half), bfloat16 "
                      "on a TPU, float32 on a CPU (bfloat16 is faster on CPUs with AVX512-BF16 "
                      "or AMX: docs/experiments.md)")
  parser.add_argument("--breakdown", action="store_true",
                      help="after the timed seeds, one more (seed N) with each phase waited "
                      "for: where the time goes (whitening fit, data, steps and their "
                      "dispatch, evaluation)")
  parser.add_argument("--profile", action="store_true",
                      help="at the end, one more run (seed N + 1) traced with jax.profiler: "
                      "device time by kernel (cnn/speedrun/profile.py)")
  args = parser.parse_args(argv)
  try:
    widths = parse_widths(args.widths)
    for flag, value, least in (("--seeds", args.seeds, 1), ("--epochs", args.epochs, 1),
                               ("--batch-size", args.batch_size, 1),
                               ("--train-images", args.train_images, 0),
                               ("--test-images", args.test_images, 0)):
      if value < least:
        raise UserError(f"{flag} must be at least {least}, not {value}")
    train, test = load(args.train_images, args.test_images)
    recipe = Recipe(batch_size=args.batch_size, epochs=args.epochs,
                    dtype=default_dtype(jax.default_backend()) if args.dtype == "auto"
                    else args.dtype,
                    widths=widths, eval_batch_size=min(Recipe.eval_batch_size, len(test[1])))
    if len(test[1]) % recipe.eval_batch_size or len(train[1]) < recipe.batch_size:
      raise UserError(f"--test-images must be a multiple of {recipe.eval_batch_size} and "
                      f"--train-images at least --batch-size={recipe.batch_size}")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  speedrun = Speedrun(train, test, recipe)
  print(f"compiled in {speedrun.compile_s:.1f} s on {jax.devices()[0].device_kind}", flush=True)
  runs = []
  for seed in range(args.seeds):
    runs.append(speedrun.run(seed))
    print(f"seed {seed}: test accuracy {100 * runs[-1]['test_accuracy']:.2f}%, "
          f"{runs[-1]['train_seconds']:.3f} s", flush=True)
    result = {"date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
              "host": host(),
              "backend": jax.default_backend(), "jax": jax.__version__, "recipe": vars(recipe),
              "train_images": len(train[1]), "test_images": len(test[1]),
              "compile_seconds": speedrun.compile_s, "seeds_asked": args.seeds, "runs": runs,
              "test_accuracy": summary([r["test_accuracy"] for r in runs]),
              "train_seconds": summary([r["train_seconds"] for r in runs])}
    write(result, args.out)  # after every seed: a run stopped early still leaves what finished
  if args.breakdown:
    result["breakdown"] = {"seed": args.seeds, **speedrun.breakdown(args.seeds)}
    print(f"breakdown: {result['breakdown']}", flush=True)
    write(result, args.out)
  if args.profile:
    result["profile"] = traced(speedrun, args.seeds + 1)
    print(f"profile: {json.dumps(result['profile'])}", flush=True)
    write(result, args.out)
  acc, sec = result["test_accuracy"], result["train_seconds"]
  print(f"{acc['n']} runs: test accuracy {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}%, "
        f"{sec['mean']:.3f} ± {sec['std']:.3f} s (compile {speedrun.compile_s:.1f} s apart)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
