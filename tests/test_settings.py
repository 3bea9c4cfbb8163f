"""The config in sections (cnn/settings.py): older flat configs read into
today's form, the registries a section or stage is added to, and the settings
reference in docs/configuration.md."""
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from cnn import augment, datasets, settings
from cnn.config_validation import validate_config
from configs import default

# Its module-scoped fixtures are made once: the whole file runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_settings")

REPO = Path(__file__).resolve().parents[1]
RESULTS = sorted((REPO / "results").glob("*.json"))


def recorded_config(path: Path) -> dict:
  return json.loads(path.read_text())["config"]


# Rows recorded before the config had sections keep the flat form ("momentum" at the top).
FLAT = [p for p in RESULTS if "optim" not in recorded_config(p)]
SECTIONED = [p for p in RESULTS if "optim" in recorded_config(p)]


def value_at(config: ml_collections.ConfigDict, path: str):
  for part in path.split("."):
    config = config[part]
  return config


def test_the_results_hold_rows_of_both_forms():
  assert FLAT and SECTIONED


@pytest.mark.parametrize("path", FLAT, ids=lambda p: p.name)
def test_every_recorded_flat_config_reads_into_sections_with_every_value_kept(path):
  saved = recorded_config(path)
  assert "momentum" in saved
  config = settings.upgrade(saved)
  validate_config(config)
  for key, value in saved.items():
    if key == "model_kwargs":
      for sub, v in value.items():
        moved = settings.renames().get(f"model_kwargs.{sub}")
        assert value_at(config, moved or f"model_kwargs.{sub}") == v, sub
      continue
    got = value_at(config, settings.renames().get(key, key))
    assert got == (tuple(value) if isinstance(value, list) else value), key
  assert settings.upgrade(config.to_dict()) == config  # today's form reads as itself


@pytest.mark.parametrize("path", SECTIONED, ids=lambda p: p.name)
def test_every_recorded_sectioned_config_reads_as_itself(path):
  saved = recorded_config(path)
  config = settings.upgrade(saved)
  validate_config(config)
  read = json.loads(json.dumps(config.to_dict()))
  defaults = json.loads(json.dumps(default.get_config().to_dict()))
  for section, values in read.items():  # settings added since the record: their defaults
    if isinstance(values, dict) and section in saved and section not in ("model_kwargs",):
      for key in set(values) - set(saved[section]):
        assert values[key] == defaults[section][key], (section, key)
        del values[key]
  assert read == saved


def test_a_saved_config_without_newer_settings_gets_their_defaults():
  config = settings.upgrade({"model": "resnet8_v1", "dataset": "mnist", "momentum": 0.5})
  assert (config.model, config.data.name, config.optim.momentum) == ("resnet8_v1", "mnist", 0.5)
  assert config.optim.sam_rho == 0.0 and config.augment.policy == "none"
  assert config.robustness.sections == default.get_config().robustness.sections


def test_the_layer_settings_older_configs_kept_in_model_kwargs_move_to_layers():
  config = settings.upgrade({"model_kwargs": {"shortcut": "zero_pad", "conv_padding": "same",
                                              "fusion_barrier": False}})
  assert config.model_kwargs.to_dict() == {"shortcut": "zero_pad"}
  assert (config.layers.conv_padding, config.layers.fusion_barrier) == ("same", False)
  assert settings.architecture_kwargs({"shortcut": "zero_pad", "conv_algorithm": "xla"}) == {
      "shortcut": "zero_pad"}


def test_every_config_file_uses_the_sections():
  import importlib  # pylint: disable=import-outside-toplevel
  for path in sorted((REPO / "configs").glob("*.py")):
    if path.name.startswith("_") or path.name == "default.py":
      continue
    validate_config(importlib.import_module(f"configs.{path.stem}").get_config())


def test_the_settings_reference_is_up_to_date():
  text = (REPO / "docs" / "configuration.md").read_text()
  assert settings.reference() in text, "regenerate: python -m cnn.settings --write"


def _invert(batch, key, s, spec):
  del key, s, spec
  return {**batch, "image": -batch["image"]}


def test_a_new_augmentation_stage_is_one_function_and_one_table_line(monkeypatch):
  spec = datasets.get_spec("cifar10")
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(4, dtype=np.int32)
  key = augment.step_key(0, 1, 2)
  section = augment.settings(cutout=8, mixup_alpha=0.4)
  before = augment.augment_batch(images, labels, key, spec=spec, settings=section)
  stages = dict(augment.STAGES)
  stages = {**{k: v for k, v in stages.items() if k != "mixing"},
            "invert": augment.Stage(_invert, None), "mixing": stages["mixing"]}
  monkeypatch.setattr(augment, "STAGES", stages)
  after = augment.augment_batch(images, labels, key, spec=spec, settings=section)
  # The new stage runs where it was put; every other stage draws what it drew before
  # (streams are numbers, not positions): inverting before a linear mix inverts the mix.
  np.testing.assert_allclose(after["image"], -before["image"], atol=1e-6)
  np.testing.assert_array_equal(after["target"], before["target"])
  assert jax.tree.structure(after) == jax.tree.structure(before)
