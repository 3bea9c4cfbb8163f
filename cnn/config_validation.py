"""Checks a config before anything expensive happens.

Names (model, dataset, optimizer, ...) are checked where they are looked up;
this file checks what no lookup would catch: keys that do not exist in
`configs/default.py` (a typo in a config file would otherwise be ignored),
and out-of-range numbers.
"""
import ml_collections

from cnn.errors import UserError

PROTOCOLS = ("validation", "paper")


def default_config() -> ml_collections.ConfigDict:
  from configs import default  # pylint: disable=import-outside-toplevel
  return default.get_config()


def _check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                prefix: str = "") -> None:
  """Types need no check here: ConfigDict refuses a value of the wrong type."""
  for key in config.keys():
    if key not in reference:
      raise UserError(f"unknown config key {prefix + key!r}; valid keys: "
                      f"{', '.join(sorted(reference.keys()))}")
    if isinstance(reference[key], ml_collections.ConfigDict) and key != "model_kwargs":
      _check_keys(config[key], reference[key], prefix + key + ".")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError with the fix, or returns None."""
  _check_keys(config, default_config())
  if config.num_epochs <= 0:
    raise UserError(f"config.num_epochs={config.num_epochs} must be > 0")
  if config.learning_rate <= 0:
    raise UserError(f"config.learning_rate={config.learning_rate} must be > 0")
  if not 0.0 <= config.label_smoothing < 1.0:
    raise UserError(f"config.label_smoothing={config.label_smoothing} must be in [0, 1)")
  if config.cutout < 0:
    raise UserError(f"config.cutout={config.cutout} must be >= 0 (0 = off)")
  if config.mixup_alpha < 0:
    raise UserError(f"config.mixup_alpha={config.mixup_alpha} must be >= 0 (0 = off)")
  if not 0.0 <= config.ema_decay < 1.0:
    raise UserError(f"config.ema_decay={config.ema_decay} must be in [0, 1) (0 = off)")
  if config.log_every_steps <= 0:
    raise UserError(f"config.log_every_steps={config.log_every_steps} must be > 0")
  if config.keep_checkpoints < 1:
    raise UserError(f"config.keep_checkpoints={config.keep_checkpoints} must be >= 1")
  if config.protocol not in PROTOCOLS:
    raise UserError(f"config.protocol={config.protocol!r} must be one of {', '.join(PROTOCOLS)}")
  if config.protocol == "paper" and config.validation_split:
    raise UserError("config.protocol='paper' reports the final model and holds nothing out: "
                    "set --config.validation_split='' or use --config.protocol=validation")
  if not 0.0 < config.warmup_factor <= 1.0:
    raise UserError(f"config.warmup_factor={config.warmup_factor} must be in (0, 1]")
  if not config.train_split or not config.test_split:
    raise UserError("config.train_split and config.test_split must name tfds splits")
