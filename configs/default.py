"""Defaults every experiment config starts from: every setting, in sections.

Other files in configs/ call `default.get_config()` and override a few
settings. Each setting's default, meaning and check are declared once, next
to the code that uses it (cnn/settings.py lists where); `python -m
cnn.settings` prints them all. Any setting can be overridden on the command
line: `--config.num_epochs=1`, `--config.optim.weight_decay=5e-4`.
"""
import ml_collections

from cnn import settings


def get_config() -> ml_collections.ConfigDict:
  return settings.default_config()
