"""Every experiment config loads, validates and names things that exist."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

from cnn import datasets
from cnn.config_validation import validate_config
from cnn.errors import UserError
from cnn.models import registry
from conftest import make_tx, run_main
from configs import default

CONFIG_FILES = sorted(p for p in (Path(__file__).parents[1] / "configs").glob("*.py")
                      if p.name != "__init__.py")


def load(path: Path):
  """Loads a config file the way `--config=path` does."""
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_the_seed_experiments_all_have_a_config():
  names = {p.stem for p in CONFIG_FILES}
  assert {"default", "vgg16_mnist", "vgg16_cifar10", "resnet20_mnist", "resnet20v1_cifar10",
          "resnet20v2_cifar10", "resnet56v1_cifar10", "resnet56v2_cifar10"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_loads_and_is_valid(path):
  config = load(path)
  validate_config(config)
  assert config.model in registry()
  datasets.get_spec(config.data.name)
  make_tx(config, steps_per_epoch=10)
  if not path.stem.startswith("_") and path.stem != "default":
    assert "python main.py --config=configs/" + path.name in open(path).read()


def test_unknown_key_and_bad_values_are_refused():
  config = default.get_config()
  config.learning_rat = 0.1
  with pytest.raises(UserError, match="unknown config key 'learning_rat'"):
    validate_config(config)
  config = default.get_config()
  config.num_epochs = 0
  with pytest.raises(UserError, match="num_epochs=0 must be > 0"):
    validate_config(config)


@pytest.mark.slow
def test_wrn28_10_trivialaugment_trains_an_epoch_on_the_cpu(data_env, cifar10, tmp_path):
  """The 1-epoch CPU check of configs/wrn28_10_cifar10_trivialaugment.py as a
  user runs it: the real 36.5M-parameter model, TrivialAugmentWide + crop +
  flip + Cutout in the step, the cosine schedule; one epoch of a 512-image
  subset (4 steps of 128; a whole 50k epoch takes hours on 2 cores)."""
  run_main(data_env, "--config=configs/wrn28_10_cifar10_trivialaugment.py",
           f"--workdir={tmp_path}", "--config.data.train_split=train[:512]",
           "--config.data.test_split=test[:500]", "--config.num_epochs=1",
           "--config.log.every_steps=1")
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["num_params"] == 36_479_194 and results["steps"] == 4
  assert math.isfinite(results["train_loss"]) and results["train_loss"] < 5.0
  assert results["test_count"] == 500 and results["protocol"] == "paper"
