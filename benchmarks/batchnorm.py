"""What does BatchNorm over the global batch cost against per-device
statistics? Side by side on simulated devices, alternating, medians.

  CNN_ARCHIVE_DIR=../shared/datasets XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python benchmarks/batchnorm.py [--config=configs/resnet20v1_cifar10.py]

`config.layers.batchnorm="global"` normalises over the whole batch (an all-reduce of
each layer's mean and variance across devices, forward and backward);
"per_device" normalises each device's sub-batch, like pmap without an axis
name, with no communication. Times the real train step of both on the same
batches and prints images/s and the ratio. On simulated CPU devices the
"communication" is in-memory, so this bounds the arithmetic and
synchronisation overhead, not an interconnect's.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from cnn import train  # noqa: E402
from benchmarks.prefetch import load_config  # noqa: E402


def images_per_s(exp, state, sums, batches, steps: int):
  jax.block_until_ready(state.params)
  start = time.perf_counter()
  for batch in batches[:steps]:
    state, sums, _ = exp.train_step(state, sums, batch)
  jax.block_until_ready(state.params)
  return steps * exp.config.batch_size / (time.perf_counter() - start), state, sums


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/resnet20v1_cifar10.py")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  runs = {}
  for mode in ("global", "per_device"):
    config = load_config(args.config)
    config.update_from_flattened_dict({
        "layers.batchnorm": mode,
        "data.train_split": f"train[:{(args.steps + 1) * config.batch_size}]"
    })
    exp = train.Experiment(config)
    batches = list(train.prefetch_to_device(exp.train_batches(0, 0), exp.batch_sharding, 0))
    state, sums, _ = exp.train_step(exp.initial_state, exp.zero_sums(), batches[-1])  # compile
    runs[mode] = [exp, state, sums, batches, []]
  for _ in range(args.repeats):
    for mode, r in runs.items():
      rate, r[1], r[2] = images_per_s(r[0], r[1], r[2], r[3], args.steps)
      r[4].append(rate)
  medians = {mode: statistics.median(r[4]) for mode, r in runs.items()}
  print(f"| batchnorm | images/s (median of {args.repeats}) |\n|---|---:|")
  for mode, value in medians.items():
    print(f"| {mode} | {value:.0f} |")
  print(f"global / per_device: {medians['global'] / medians['per_device']:.3f} on "
        f"{jax.device_count()} {jax.devices()[0].platform} devices, {args.config}")


if __name__ == "__main__":
  main()
