"""Shared fixtures: real MNIST/CIFAR-10 prepared once per session through tfds.

Data comes from `$CNN_ARCHIVE_DIR` (default: ../shared/datasets next to the
repo) and is prepared into `$TFDS_DATA_DIR` (default: a session temp dir).
"""
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def archive_dir() -> str:
  path = os.environ.get("CNN_ARCHIVE_DIR") or str(REPO.parent / "shared" / "datasets")
  if not Path(path, "mnist").is_dir():
    pytest.fail(f"tests need the original MNIST/CIFAR-10 files: set CNN_ARCHIVE_DIR "
                f"(tried {path}); see docs/experiments.md 'Offline data'")
  return path


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
  return os.environ.get("TFDS_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def data_env(archive_dir, tfds_dir) -> dict:
  """Environment for subprocesses running main.py on the real data."""
  return {**os.environ, "CNN_ARCHIVE_DIR": archive_dir, "TFDS_DATA_DIR": tfds_dir,
          "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}


def _prepared(name: str, archive_dir: str, tfds_dir: str):
  from cnn import datasets
  from cnn.datasets import tfds_source
  return tfds_source.TfdsSource(tfds_source.prepare(datasets.get_spec(name), tfds_dir, archive_dir))


@pytest.fixture(scope="session")
def mnist(archive_dir, tfds_dir):
  return _prepared("mnist", archive_dir, tfds_dir)


@pytest.fixture(scope="session")
def cifar10(archive_dir, tfds_dir):
  return _prepared("cifar10", archive_dir, tfds_dir)


def run_main(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
  """`python main.py ARGS` from the repo root, as a user runs it."""
  result = subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"main.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result


def only_error_line(result: subprocess.CompletedProcess) -> str:
  """The one line a user-fixable mistake prints (docs/errors.md): exit status 2
  and nothing else on stderr, no library warning before it. Returns the line."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  return lines[0]


def mnist_train_step(**overrides):
  """cnn.train.train_step for batches of uint8 MNIST images, unaugmented
  (normalised only), dropout key 1; `overrides` replace its other arguments
  (ema_decay, label_smoothing, augment, ...)."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from cnn import augment, datasets, train  # pylint: disable=import-outside-toplevel
  args = dict(augment=functools.partial(augment.augment_batch, spec=datasets.get_spec("mnist"),
                                        settings=augment.settings(geometry="none")),
              seed=0, steps_per_epoch=1000, dropout_key=jax.random.key(1), label_smoothing=0.0)
  return functools.partial(train.train_step, **{**args, **overrides})


def make_tx(config, steps_per_epoch: int):
  """`optim.make_optimizer` with a whole config's sections, as train.py calls it."""
  from cnn import optim  # pylint: disable=import-outside-toplevel
  return optim.make_optimizer(config.optim, config.schedule, learning_rate=config.learning_rate,
                              num_epochs=config.num_epochs, steps_per_epoch=steps_per_epoch)


def lr_schedule(config, steps_per_epoch: int):
  """`optim.make_lr_schedule` with a whole config's section and rates, as train.py calls it."""
  from cnn import optim  # pylint: disable=import-outside-toplevel
  return optim.make_lr_schedule(config.schedule, config.learning_rate, config.num_epochs,
                                steps_per_epoch)


def shared_run(tmp_path_factory, name: str, env: dict, *args: str):
  """`main.py ARGS --workdir=<shared>/NAME` once per test run: under pytest-xdist the
  first worker to ask trains it while the others wait on a lock, then all read the
  same workdir (tests must not change it). Returns (workdir, its CompletedProcess)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the run's temp root, shared by the workers
  workdir, log = root / name, root / f"{name}.stderr"
  with open(root / f".{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not log.exists():
      shutil.rmtree(workdir, ignore_errors=True)
      result = run_main(env, *args, f"--workdir={workdir}")
      log.write_text(result.stderr)
  return workdir, subprocess.CompletedProcess(args, 0, "", log.read_text())


@pytest.fixture(scope="session")
def tiny_run(data_env, tmp_path_factory, mnist):
  """One uninterrupted run of configs/tiny_mnist.py: the reference for the
  end-to-end, resume and determinism tests."""
  return shared_run(tmp_path_factory, "tiny", data_env, "--config=configs/tiny_mnist.py")


@pytest.fixture(scope="session")
def tiny_cifar_run(data_env, tmp_path_factory, cifar10):
  """configs/tiny_cifar10.py (with test-time flips): a CIFAR-10 workdir for
  the inference tests."""
  return shared_run(tmp_path_factory, "tiny_cifar", data_env, "--config=configs/tiny_cifar10.py")[0]


# Slow suites, each behind its own option (docs/accelerators.md: "Checking it without a
# cluster"; benchmarks/README.md: "Per-shape convolution algorithms").
SLOW_SUITES = {
    "cluster": "slow device/process matrix: python -m pytest -q tests --cluster -m cluster",
    "exhaustive": ("every algorithm on every conv shape of every model: "
                   "python -m pytest -q tests --exhaustive -m exhaustive"),
    "slow": ("end-to-end checks of 30 s or more each, beyond CI's 15 minutes (the damage matrix "
             "over every file of a checkpoint, the notebook, "
             "the accelerator kit's interrupted and carried row and its whole tiny queue, "
             "reproducibility across runs, kill -9 while a checkpoint is written, divergence, "
             "the workdir lock, the CPU conv algorithms on whole models, the CIFAR-10 test "
             "split as PNG files, SIGTERM, the exports, mixup, learning with the data on the "
             "device, the attack's eps-ball, one WRN-28-10 TrivialAugment epoch of 512 images): "
             "python -m pytest -q tests --slow -m slow"),
    "published": ("the weights kept outside git (results/*.json \"weights_published\": "
                  "VGG-16's) reproduce their recorded test accuracy: "
                  "CNN_PUBLISHED_WEIGHTS=DIR python -m pytest -q tests --published -m published"),
    "rehearsal": ("the accelerator kit's visit at CPU size on the emulated box "
                  "(tools/box_rehearsal.py: Python 3.12, jax 0.11.2, the device tool's limits; "
                  "builds its env once): python -m pytest -q tests --rehearsal -m rehearsal"),
}


def pytest_addoption(parser):
  for name, help_text in SLOW_SUITES.items():
    parser.addoption(f"--{name}", action="store_true", help=f"also run the {help_text}")


# JAX's persistent compilation cache, shared by this run's tests, their main.py subprocesses
# and pytest-xdist's workers (which inherit the environment): the same tiny models are compiled
# by dozens of processes. A cached executable is the compiled program itself, so numbers are
# unchanged; entries are keyed on the program, the options and the jax version.
CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_configure(config):
  for name, help_text in SLOW_SUITES.items():
    config.addinivalue_line("markers", f"{name}: {help_text}")
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # set by the controller for xdist workers
    config.jax_cache_dir = tempfile.mkdtemp(prefix="cnn-tests-jax-cache-")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=config.jax_cache_dir, **CACHE_ENV)


def pytest_unconfigure(config):
  if getattr(config, "jax_cache_dir", None):
    shutil.rmtree(config.jax_cache_dir, ignore_errors=True)
    del os.environ["JAX_COMPILATION_CACHE_DIR"]


def pytest_collection_modifyitems(config, items):
  for name, help_text in SLOW_SUITES.items():
    if config.getoption(f"--{name}"):
      continue
    skip = pytest.mark.skip(reason=help_text)
    for item in items:
      if name in item.keywords:
        item.add_marker(skip)
