"""Trains and evaluates one experiment; classifies your own images with it.

  python main.py --config=configs/resnet20v1_cifar10.py --workdir=runs/r20
  python main.py --config=configs/resnet20_mnist.py --workdir=W --config.num_epochs=1
  python main.py --mode=evaluate --config=configs/resnet20v1_cifar10.py --workdir=runs/r20
  python main.py --config=configs/resnet20_mnist.py --workdir=runs/r20m --config.sweep.seeds=0-4
  python main.py --mode=predict --workdir=runs/r20 --images=photos/ --images='more/*.jpg'

Rerunning the same training command resumes from the latest checkpoint in --workdir.
"""
import difflib
import logging as std_logging
import os
import sys

# TensorFlow only feeds data here: no INFO logs, and none of its oneDNN math kernels (they
# would not run on uint8 pipelines, but their banner would reach stderr before any error line).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging
from ml_collections import config_flags

from cnn.errors import DISK_FULL_TEXTS  # no heavy imports: errors.py needs only errno

# Library warnings that only precede an error line of ours about the same thing: tfds's about the
# empty folder a failed offline preparation leaves, and asyncio's about the other reads orbax
# had in flight when a damaged checkpoint failed (we report that step in one line).
FOLDED_TEXTS = ("has no dataset_info.json", "Task exception was never retrieved")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict"],
                  "train: train (or resume) and evaluate; evaluate: write <workdir>/report/ "
                  "from the workdir's best checkpoint; predict: classify --images.")
flags.DEFINE_multi_string("images", [], "predict: image files, folders or globs (repeatable).")
flags.DEFINE_string("weights", None, "predict: a published weights file (*.safetensors) "
                    "instead of --workdir.")
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "predict: the checkpoint results.json "
                  "reports (best), or the newest one (last).")
flags.DEFINE_integer("top_k", 3, "predict: classes shown per image.")
flags.DEFINE_string("out", None, "predict: folder for predictions.csv and .json (default "
                    "<workdir>/predictions, or predictions/ for --weights).")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("coordinator_address", "", "Multi-process: host:port of process 0 "
                    "(not needed on TPU pods and under SLURM, which are detected).")
flags.DEFINE_integer("num_processes", 1, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-process: index of this process.")

REQUIRED = {"train": ("config", "workdir"), "evaluate": ("config", "workdir")}


def missing_flags_message(mode: str) -> str | None:
  """One line naming the flags `--mode` needs that were not given."""
  if mode == "predict":
    if bool(FLAGS.workdir) == bool(FLAGS.weights):
      return "--mode=predict needs --workdir=W (a trained workdir) or --weights=FILE, not both"
    return None if FLAGS.images else "--mode=predict needs --images=FILE|FOLDER|GLOB"
  missing = [f"--{name}" for name in REQUIRED[mode] if FLAGS[name].value is None]
  return f"--mode={mode} needs {' and '.join(missing)}" if missing else None


def _show_only_our_info(record) -> bool:
  """Library INFO chatter (orbax, tfds, jax) hides the progress lines, and a
  full disk is reported once, by us, not by every write that hit it."""
  if "/cnn/" in record.pathname:
    return True
  text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
  if any(t in text for t in DISK_FULL_TEXTS + FOLDED_TEXTS):
    return False
  return record.levelno >= std_logging.WARNING


def disk_full_message(workdir: str) -> str:
  """One line for a workdir on a full disk, naming the checkpoint it resumes from."""
  from cnn import checkpoint  # pylint: disable=import-outside-toplevel
  return (f"no space left on the device of workdir {workdir}; "
          f"{checkpoint.what_is_kept(workdir)}: free space, then rerun the same command to resume")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_show_only_our_info)
  missing = missing_flags_message(FLAGS.mode)
  if missing:
    print(f"error: {missing}", file=sys.stderr)
    sys.exit(2)
  if FLAGS.mode == "predict":
    sys.exit(predict())
  from cnn.config_validation import validate_config  # pylint: disable=import-outside-toplevel
  from cnn.errors import (  # pylint: disable=import-outside-toplevel
      Preempted, UserError, is_disk_full)
  try:
    validate_config(FLAGS.config)  # before the slow imports: mistakes are reported at once
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  from cnn import backend, distributed, sweep, train  # pylint: disable=import-outside-toplevel
  backend.configure(FLAGS.config)  # XLA flags: before the first device is touched
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  try:
    if FLAGS.mode == "train" and FLAGS.config.sweep.seeds:
      sweep.train_seeds(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "train":
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      from cnn.report import analysis  # pylint: disable=import-outside-toplevel
      analysis.write_reports(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    logging.flush()
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted as e:  # a clean stop: exit status 0, results.json not yet written
    logging.flush()
    print(f"preempted: {e}", file=sys.stderr)
  except Exception as e:  # pylint: disable=broad-except (a full disk fails any write)
    if not is_disk_full(e):
      raise
    logging.flush()
    print(f"error: {disk_full_message(FLAGS.workdir)}", file=sys.stderr)
    sys.exit(2)


def predict() -> int:
  """--mode=predict: no training machinery, no multi-process setup."""
  from cnn.errors import UserError, is_disk_full  # pylint: disable=import-outside-toplevel
  from cnn.inference import predict as predicting  # pylint: disable=import-outside-toplevel
  try:
    return predicting.run(FLAGS.workdir, FLAGS.weights, FLAGS.images, FLAGS.checkpoint,
                          FLAGS.top_k, FLAGS.out)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    if not is_disk_full(e):
      raise
    print(f"error: no space left to write the predictions ({e}); free space or pass --out=DIR",
          file=sys.stderr)
    return 2


def config_path(argv: list[str]) -> str | None:
  """The file named by `--config=PATH[:ARG]` (or `--config PATH`), if any."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":", 1)[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def missing_config_message(path: str) -> str:
  """`configs/resnet20v1_cifar.py not found; did you mean ...` with the closest names."""
  folder = os.path.dirname(path) or "."
  known = sorted(f for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_")
                 ) if os.path.isdir(folder) else []
  close = difflib.get_close_matches(os.path.basename(path), known, n=3)
  hint = (f"did you mean {', '.join(os.path.join(folder, c) for c in close)}?" if close
          else f"the configs are in configs/ ({', '.join(known[:6])}, ...)")
  return f"config file {path} not found; {hint}"


def config_load_message(path: str, error: BaseException) -> str:
  """One line for a config file that exists but cannot be loaded."""
  if isinstance(error, SyntaxError):
    return (f"config file {path} has a syntax error at line {error.lineno}: {error.msg}; "
            "fix the file")
  text = " ".join(str(error).split())
  if "get_config" in text:
    return (f"config file {path} has no get_config(); define get_config() returning a "
            "ConfigDict (see configs/default.py)")
  return f"config file {path} could not be loaded ({type(error).__name__}: {text}); fix the file"


def renamed_override_message(argv: list[str]) -> str | None:
  """One line for a `--config.KEY` of an older, flat config (`--config.momentum`
  is `--config.optim.momentum` now), or None."""
  keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if not keys:
    return None
  from cnn import settings  # pylint: disable=import-outside-toplevel
  return next((m for m in map(settings.renamed_message, keys) if m), None)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but every mistake in `--config` (a missing or broken file,
  an unknown `--config.KEY`, a value of the wrong type) is one line, exit 2."""
  path = config_path(argv)
  if path is not None and not os.path.isfile(path):
    print(f"error: {missing_config_message(path)}", file=sys.stderr)
    sys.exit(2)
  moved = renamed_override_message(argv)
  if moved:
    print(f"error: {moved}", file=sys.stderr)
    sys.exit(2)
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    if "get_config" in str(e):
      print(f"error: {config_load_message(path, e)}", file=sys.stderr)
      sys.exit(2)
    hint = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    hint = hint.replace(" Did you mean", "; did you mean")
    print(f"error: unknown config key {hint}; valid keys are in configs/default.py",
          file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    if "Error whilst parsing config file" in str(e):  # get_config() raised; absl wraps it
      last = [line for line in str(e).splitlines() if line.strip()][-1].strip()
      print(f"error: config file {path} could not be loaded ({last})", file=sys.stderr)
    else:
      print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # pylint: disable=broad-except (anything a config file can raise)
    print(f"error: {config_load_message(path, e)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
