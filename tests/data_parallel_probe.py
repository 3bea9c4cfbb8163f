"""Trains a few steps of configs/tiny_mnist.py (config fields overridden by
an optional JSON argument) and prints losses and validation metrics as JSON; run under different XLA_FLAGS device counts by
tests/test_data_parallel.py (JAX fixes its device count at import)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from cnn import train  # noqa: E402
from configs import tiny_mnist  # noqa: E402


def main(learning_rate: float, batchnorm: str, data_on_device: bool, overrides: dict) -> None:
  config = tiny_mnist.get_config()
  config.update_from_flattened_dict({
      "data.train_split": "train[:384]",
      "num_epochs": 1,
      "learning_rate": learning_rate,
      "eval.batch_size": 1000,
      "layers.batchnorm": batchnorm,
      "data.on_device": data_on_device,
      **overrides
  })
  exp = train.Experiment(config)
  state, sums, losses = exp.initial_state, exp.zero_sums(), []
  for batch in exp.device_batches(0, 0):
    state, sums, loss = exp.train_step(state, sums, batch)
    losses.append(float(loss))
  print(json.dumps({"devices": jax.device_count(), "losses": losses,
                    "validation": exp.evaluate(state, "validation")}))


if __name__ == "__main__":
  main(float(sys.argv[1]), sys.argv[2], sys.argv[3] == "on_device",
       json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
