"""Does copying batches to the devices ahead of the step help? Side by side.

  CNN_ARCHIVE_DIR=../shared/datasets python benchmarks/prefetch.py [--config=configs/resnet20_mnist.py]

Times the same training steps (same data, same compiled step) with
`prefetch_batches` = 0 (copy just before the step) and 2, alternating, and
prints the median images/s of each over the repeats and their ratio.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from cnn import train  # noqa: E402


def load_config(path: str):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def images_per_s(exp: train.Experiment, state, sums, prefetch: int, steps: int):
  """Returns (images/s, state, sums): the step donates its inputs, so the
  state is threaded through the repeats."""
  batches = train.prefetch_to_device(exp.train_batches(0, 0), exp.batch_sharding, prefetch)
  start = None
  for i, batch in enumerate(batches):
    if i == 1:  # skip the first step: input pipeline warm-up
      jax.block_until_ready(state.params)
      start = time.perf_counter()
    state, sums, _ = exp.train_step(state, sums, batch)
    if i == steps:
      break
  jax.block_until_ready(state.params)
  return (steps - 1) * exp.config.batch_size / (time.perf_counter() - start), state, sums


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/resnet20_mnist.py")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  config = load_config(args.config)
  config.data.train_split = f"train[:{(args.steps + 2) * config.batch_size}]"
  exp = train.Experiment(config)
  state, sums = exp.initial_state, exp.zero_sums()
  state, sums, _ = exp.train_step(state, sums, next(  # compile once, outside the timing
      train.prefetch_to_device(exp.train_batches(0, 0), exp.batch_sharding, 0)))
  results = {0: [], 2: []}
  for _ in range(args.repeats):
    for prefetch in results:
      rate, state, sums = images_per_s(exp, state, sums, prefetch, args.steps)
      results[prefetch].append(rate)
  medians = {k: statistics.median(v) for k, v in results.items()}
  print(f"| prefetch_batches | images/s (median of {args.repeats}) |\n|---:|---:|")
  for k, v in medians.items():
    print(f"| {k} | {v:.0f} |")
  print(f"ratio 2/0: {medians[2] / medians[0]:.3f} on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)")


if __name__ == "__main__":
  main()
