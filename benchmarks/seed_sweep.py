"""Seeds trained together (vmapped) against one after another, on one device.

  python benchmarks/seed_sweep.py                         # ResNet-20, 1/2/4/8 seeds, batch 128
  python benchmarks/seed_sweep.py --seeds 8,32 --json out.json

The stacked step is cnn/sweep.py's `stacked_train_step`, the one the vmap
placement trains with (vmap of cnn.train.train_step over a leading seed axis
of the state); "one seed" is that same train step alone (benchmarks/run.py's
JaxStepper), which is what the sequential placement runs N times. Both on one
fixed batch per seed, fp32, SGD + Nesterov, the state donated and threaded
through; the two alternate over rounds and the medians are compared. Reports
images/s per seed and in total, and the total against one seed alone (the
speed-up over training the seeds one after another).
"""
import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from benchmarks import run as bench  # noqa: E402


class StackedStepper:
  """`num_seeds` ResNets in one vmapped step, on the first device."""

  def __init__(self, model_name: str, num_seeds: int, batch_size: int, dtype: str = "float32"):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax import sharding  # pylint: disable=import-outside-toplevel
    from cnn import augment, datasets, model_fn, optim  # pylint: disable=import-outside-toplevel
    from cnn import sweep, train  # pylint: disable=import-outside-toplevel
    from configs import default  # pylint: disable=import-outside-toplevel
    self._jax = jax
    config = default.get_config()
    config.optim.nesterov, config.optim.weight_decay = True, 5e-4
    config.augment.geometry = "none"  # as JaxStepper: the fixed batch, normalised only
    config.layers.dtype = str(jnp.dtype(dtype))
    model = model_fn.build(model_name, {}, config.layers, num_classes=10)
    tx = optim.make_optimizer(config.optim, config.schedule,
                              learning_rate=config.learning_rate,
                              num_epochs=config.num_epochs, steps_per_epoch=100)
    states = [train.create_train_state(model, tx, jax.random.key(s), (32, 32, 3))
              for s in range(num_seeds)]
    self.state = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    self.sums = jax.tree.map(lambda *xs: jnp.stack(xs), *[train.zero_sums()] * num_seeds)
    rng = np.random.default_rng(0)
    self.batches = [{"image": jnp.asarray(rng.integers(0, 256, (batch_size, 32, 32, 3)),
                                          jnp.uint8),
                     "label": jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)}
                    for _ in range(num_seeds)]
    self.seeds = jnp.arange(num_seeds, dtype=jnp.int32)
    self.keys = jnp.stack([jax.random.key_data(jax.random.key(100 + s))
                           for s in range(num_seeds)])
    mesh = sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("seed", "data"))
    settings = {"augment": augment.make_augment(config.augment, datasets.get_spec("cifar10")),
                "steps_per_epoch": 100, "label_smoothing": 0.0}
    self._step = jax.jit(functools.partial(
        sweep.stacked_train_step, settings=settings,
        batch_sharding=sharding.NamedSharding(mesh, sharding.PartitionSpec("seed", "data"))),
        donate_argnums=(0, 1))
    self.images_per_step = num_seeds * batch_size
    start = time.perf_counter()
    self.run(1)
    self.compile_s = time.perf_counter() - start
    self.run(2)

  def run(self, steps: int) -> None:
    for _ in range(steps):
      self.state, self.sums, _ = self._step(self.state, self.sums, self.batches, self.seeds,
                                            self.keys)
    self._jax.block_until_ready(self.state.params)

  def images_per_s(self, steps: int) -> float:
    start = time.perf_counter()
    self.run(steps)
    return self.images_per_step * steps / (time.perf_counter() - start)


def measure(model: str, seed_counts: list[int], batch_size: int, steps: int, rounds: int
            ) -> list[dict]:
  """One row per seed count: medians over `rounds` alternating timings."""
  alone = bench.JaxStepper(model, "float32", batch_size, {})
  rows = []
  for n in seed_counts:
    stacked = StackedStepper(model, n, batch_size)
    times = bench.alternate({"alone": lambda: alone.images_per_s(steps),
                             "stacked": lambda: stacked.images_per_s(steps)}, rounds)
    one, total = statistics.median(times["alone"]), statistics.median(times["stacked"])
    rows.append({"model": model, "seeds": n, "batch_size": batch_size, "steps": steps,
                 "rounds": rounds, "one_seed_images_per_s": one,
                 "stacked_images_per_s": total, "stacked_per_seed_images_per_s": total / n,
                 "stacked_vs_sequential": total / one, "stacked_compile_s": stacked.compile_s,
                 "one_seed_compile_s": alone.compile_s})
    del stacked
  return rows


def render(rows: list[dict], machine: dict) -> str:
  lines = [f"Seed sweep step, {rows[0]['model']}, batch {rows[0]['batch_size']} per seed, fp32, "
           f"on {machine['device']} ({machine['cpu']}); medians of {rows[0]['rounds']} rounds",
           "", "| seeds | one seed alone img/s | stacked total img/s | per seed img/s "
           "| stacked / sequential |", "|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['seeds']} | {r['one_seed_images_per_s']:,.0f} | "
                 f"{r['stacked_images_per_s']:,.0f} | {r['stacked_per_seed_images_per_s']:,.0f} "
                 f"| {r['stacked_vs_sequential']:.2f}x |")
  return "\n".join(lines) + "\n"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="resnet20_v1")
  parser.add_argument("--seeds", default="1,2,4,8", help="seed counts, comma-separated")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10, help="steps per timing")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--json", default=None, help="also write the rows here")
  args = parser.parse_args()
  import jax  # pylint: disable=import-outside-toplevel
  machine = {"device": jax.devices()[0].device_kind, "cpu": bench.cpu_model(),
             "backend": jax.default_backend()}
  rows = measure(args.model, [int(n) for n in args.seeds.split(",")], args.batch_size,
                 args.steps, args.rounds)
  sys.stdout.write(render(rows, machine))
  if args.json:
    Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
