"""Runs the real training loop (`train.train_epochs`) on tiny MNIST in one of
several processes and prints the steps at which the loop asked for the stop
flag, i.e. where it agreed with the other processes (an all-gather that waits
for the device). Run by tests/test_cluster.py:

  host_sync_probe.py COORDINATOR_ADDRESS NUM_PROCESSES PROCESS_ID WORKDIR
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnn import distributed, train  # noqa: E402
from configs import tiny_mnist  # noqa: E402


def main(address: str, processes: int, process_id: int, workdir: str) -> None:
  if processes > 1:
    distributed.initialize(address, processes, process_id)
  config = tiny_mnist.get_config()
  config.update_from_flattened_dict({
      "data.train_split": "train[:1024]",
      "num_epochs": 2,
      "log.every_steps": 5
  })
  exp = train.Experiment(config)
  run = train.Run(exp, workdir)
  progress, asked_at = {"step": 0}, []

  def stop_requested() -> bool:
    asked_at.append(progress["step"])
    return False

  original_step = exp.train_step

  def counting_step(*args):
    progress["step"] += 1
    return original_step(*args)

  exp.train_step = counting_step
  train.train_epochs(run, stop_requested)
  run.manager.wait_until_finished()
  run.manager.close()
  print(json.dumps({"steps": progress["step"], "asked_at": asked_at}))


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
