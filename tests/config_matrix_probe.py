"""Builds every config in configs/ the way `main.py` does on this process's
device count (set by XLA_FLAGS before JAX starts): model, state, shardings and
the first training and evaluation batches; a real train step and evaluation
for the small models. Prints one JSON line per config. Run by
tests/test_cluster.py for 1, 2, 4, 8 and 16 simulated devices."""
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from cnn import train  # noqa: E402

TRAIN_STEP_BELOW_PARAMS = 300_000  # a real step for the ResNet-20s and the MNIST nets


def load(path: Path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def probe(path: Path) -> dict:
  config = load(path)
  # Small splits keep the probe fast; batch sizes and everything else are the config's.
  config.data.train_split = f"train[:{2 * config.batch_size}]"
  if config.data.validation_split:
    config.data.validation_split = "train[-600:]"
  config.data.test_split = "test[:700]"
  exp = train.Experiment(config)
  batch = next(iter(exp.device_batches(0, 0)))
  assert batch["image"].shape[0] == config.batch_size
  assert batch["image"].sharding.is_equivalent_to(exp.batch_sharding, batch["image"].ndim)
  out = {"config": path.stem, "devices": jax.device_count(), "params":
         train.count_params(exp.initial_state.params), "batch_size": config.batch_size,
         "eval_batch_size": exp.eval_batch_size}
  if out["params"] < TRAIN_STEP_BELOW_PARAMS:
    state, sums, loss = exp.train_step(exp.initial_state, exp.zero_sums(), batch)
    out["loss"] = float(loss)
    out["test"] = exp.evaluate(state, "test")
  return out


def main(paths: list[str]) -> None:
  for p in paths:
    print(json.dumps(probe(Path(p))), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
