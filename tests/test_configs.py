"""Every experiment config loads, validates and names things that exist."""
import importlib.util
from pathlib import Path

import pytest

from cnn import datasets, optim
from cnn.config_validation import validate_config
from cnn.errors import UserError
from cnn.models import registry
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
  datasets.get_spec(config.dataset)
  optim.make_optimizer(config, steps_per_epoch=10)
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
