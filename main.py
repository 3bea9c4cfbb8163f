"""Trains and evaluates one experiment.

  python main.py --config=configs/resnet20v1_cifar10.py --workdir=runs/r20
  python main.py --config=configs/resnet20_mnist.py --workdir=W --config.num_epochs=1

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""
import logging as std_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds data here

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate"],
                  "train: train (or resume) and evaluate; evaluate: write <workdir>/report/ "
                  "from the workdir's best checkpoint.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("coordinator_address", "", "Multi-process: host:port of process 0 "
                    "(not needed on TPU pods and under SLURM, which are detected).")
flags.DEFINE_integer("num_processes", 1, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-process: index of this process.")
flags.mark_flags_as_required(["config", "workdir"])


def _show_only_our_info(record) -> bool:
  """Library INFO chatter (orbax, tfds, jax) hides the progress lines."""
  return record.levelno >= std_logging.WARNING or "/cnn/" in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_show_only_our_info)
  from cnn import backend, distributed, train  # pylint: disable=import-outside-toplevel
  from cnn.errors import Preempted, UserError  # pylint: disable=import-outside-toplevel
  backend.configure(FLAGS.config)  # XLA flags: before the first device is touched
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  try:
    if FLAGS.mode == "train":
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      from cnn import report  # pylint: disable=import-outside-toplevel
      report.write_report(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    logging.flush()
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted as e:  # a clean stop: exit status 0, results.json not yet written
    logging.flush()
    print(f"preempted: {e}", file=sys.stderr)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but an unknown `--config.KEY` is one line, not a traceback."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    hint = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    hint = hint.replace(" Did you mean", "; did you mean")
    print(f"error: unknown config key {hint}; valid keys are in configs/default.py",
          file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
