"""Checks a config before anything expensive happens, from one table.

`RULES` has one entry per field of `configs/default.py`: the type it must
have, the values it may take and an example of a good value for the error
line. A test fails when a field exists without a rule, so a new knob cannot
be added unchecked. Keys that do not exist in `configs/default.py` (a typo in
a config file would otherwise be ignored) are refused too.

Names (model, dataset, augmentation, ...) are checked against the registries
that look them up, so the lists of valid names are never written twice.
"""
import dataclasses
from typing import Any, Callable

import ml_collections

from cnn.errors import UserError, unknown_name

PROTOCOLS = ("validation", "paper")
DTYPES = ("float32", "bfloat16", "float16")
BATCHNORM_MODES = ("global", "per_device")


def default_config() -> ml_collections.ConfigDict:
  from configs import default  # pylint: disable=import-outside-toplevel
  return default.get_config()


# Registries, imported when a name is checked (they pull in flax).
def _models():
  from cnn.models import registry  # pylint: disable=import-outside-toplevel
  return registry()


def _datasets():
  from cnn.datasets import DATASETS  # pylint: disable=import-outside-toplevel
  return DATASETS


def _data_sources():
  from cnn.datasets import DATA_SOURCES  # pylint: disable=import-outside-toplevel
  return DATA_SOURCES


def _augmentations():
  from cnn.augment import GEOMETRY  # pylint: disable=import-outside-toplevel
  return GEOMETRY


def _auto_augment_policies():
  from cnn.augment import POLICIES  # pylint: disable=import-outside-toplevel
  return POLICIES


def _optimizers():
  from cnn.optim import OPTIMIZERS  # pylint: disable=import-outside-toplevel
  return OPTIMIZERS


def _schedules():
  from cnn.optim import SCHEDULES  # pylint: disable=import-outside-toplevel
  return SCHEDULES


def _warmup_shapes():
  from cnn.optim import WARMUP_SHAPES  # pylint: disable=import-outside-toplevel
  return WARMUP_SHAPES


@dataclasses.dataclass(frozen=True)
class Rule:
  """`kind`: the Python type(s) allowed (int is accepted for float). Either
  `choices` (a tuple, or a function returning the valid names) or `ok` (a
  predicate) with `expect` (what it means, for the message), and `example`
  (a valid value for the fix)."""
  kind: type | tuple[type, ...]
  example: Any
  ok: Callable[[Any], bool] = lambda v: True
  expect: str = ""
  choices: tuple | Callable[[], Any] | None = None


def _at_least(low):
  return lambda v: v >= low


def _between(low, high, high_open=True):
  return lambda v: low <= v < high if high_open else low <= v <= high


def _increasing_fractions(v) -> bool:
  return (all(0.0 < b < 1.0 for b in v)
          and all(a < b for a, b in zip(v, v[1:])))


# cnn.robustness.SECTIONS, repeated so validation needs no JAX import (a test pins them equal).
ROBUSTNESS_SECTIONS = ("calibration", "corruptions", "adversarial")


def _known_sections(value: str) -> bool:
  return all(s.strip() in ROBUSTNESS_SECTIONS for s in value.split(",") if s.strip())


INT, FLOAT, BOOL, STR = int, (int, float), bool, str
RULES: dict[str, Rule] = {
    "seed": Rule(INT, 0, _at_least(0), ">= 0"),
    "protocol": Rule(STR, "validation", choices=PROTOCOLS),
    "dataset": Rule(STR, "cifar10", choices=_datasets),
    "train_split": Rule(STR, "train[:45000]", bool, "a tfds split, e.g. train[:45000]"),
    "validation_split": Rule(STR, "train[45000:]"),  # "" = none
    "test_split": Rule(STR, "test", bool, "a tfds split, e.g. test"),
    "archive_dir": Rule(STR, ""),
    "data_dir": Rule(STR, ""),
    "data_source": Rule(STR, "archives", choices=_data_sources),
    "augment": Rule(STR, "pad_crop_flip", choices=_augmentations),
    "crop_padding": Rule(INT, 4, _at_least(0), ">= 0"),
    "cutout": Rule(INT, 16, _at_least(0), ">= 0 (0 = off)"),
    "auto_augment": Rule(STR, "randaugment", choices=_auto_augment_policies),
    "randaugment_num_ops": Rule(INT, 2, _at_least(1), ">= 1"),
    "randaugment_magnitude": Rule(INT, 9, _between(0, 30, high_open=False), "in [0, 30]"),
    "random_erasing": Rule(FLOAT, 0.25, _between(0, 1, high_open=False), "in [0, 1] (0 = off)"),
    "mixup_alpha": Rule(FLOAT, 0.2, _at_least(0), ">= 0 (0 = off)"),
    "cutmix_alpha": Rule(FLOAT, 1.0, _at_least(0), ">= 0 (0 = off)"),
    "model": Rule(STR, "resnet20_v1", choices=_models),
    "model_kwargs": Rule(ml_collections.ConfigDict, "{}"),
    "dtype": Rule(STR, "float32", choices=DTYPES),
    "gpu_deterministic_ops": Rule(BOOL, True),
    "batchnorm": Rule(STR, "global", choices=BATCHNORM_MODES),
    "optimizer": Rule(STR, "sgd", choices=_optimizers),
    "learning_rate": Rule(FLOAT, 0.1, lambda v: v > 0, "> 0"),
    "momentum": Rule(FLOAT, 0.9, _between(0, 1), "in [0, 1)"),
    "nesterov": Rule(BOOL, True),
    "weight_decay": Rule(FLOAT, 1e-4, _at_least(0), ">= 0"),
    "grad_clip_norm": Rule(FLOAT, 1.0, _at_least(0), ">= 0 (0 = off)"),
    "grad_accum_steps": Rule(INT, 2, _at_least(1), ">= 1 (1 = off)"),
    "sam_rho": Rule(FLOAT, 0.05, _at_least(0), ">= 0 (0 = off)"),
    "lr_schedule": Rule(STR, "step", choices=_schedules),
    "lr_boundaries": Rule((tuple, list), "'(0.5,0.75)'", _increasing_fractions,
                          "increasing fractions of the run in (0, 1)"),
    "lr_decay_factor": Rule(FLOAT, 0.1, lambda v: 0 < v <= 1, "in (0, 1]"),
    "warmup_epochs": Rule(FLOAT, 1.0, _at_least(0), ">= 0"),
    "warmup_shape": Rule(STR, "linear", choices=_warmup_shapes),
    "warmup_factor": Rule(FLOAT, 0.1, lambda v: 0 < v <= 1, "in (0, 1]"),
    "plateau_factor": Rule(FLOAT, 0.1, lambda v: 0 < v < 1, "in (0, 1)"),
    "plateau_patience": Rule(INT, 5, _at_least(0), ">= 0"),
    "plateau_cooldown": Rule(INT, 0, _at_least(0), ">= 0"),
    "plateau_min_scale": Rule(FLOAT, 1e-3, lambda v: 0 < v <= 1, "in (0, 1]"),
    "label_smoothing": Rule(FLOAT, 0.1, _between(0, 1), "in [0, 1)"),
    "ema_decay": Rule(FLOAT, 0.999, _between(0, 1), "in [0, 1) (0 = off)"),
    "eval_flip": Rule(BOOL, True),
    "batch_size": Rule(INT, 128, lambda v: v > 0, "> 0"),
    "eval_batch_size": Rule(INT, 500, lambda v: v > 0, "> 0"),
    "prefetch_batches": Rule(INT, 2, _at_least(0), ">= 0"),
    "data_on_device": Rule(BOOL, True),
    "num_epochs": Rule(INT, 30, lambda v: v > 0, "> 0"),
    "log_every_steps": Rule(INT, 100, lambda v: v > 0, "> 0"),
    "checkpoint_every_steps": Rule(INT, 1000, _at_least(0), ">= 0 (0 = each epoch's end)"),
    "keep_checkpoints": Rule(INT, 2, _at_least(1), ">= 1"),
    "report_image_index": Rule(INT, 0, _at_least(0), ">= 0"),
    "robustness": Rule(STR, "calibration", _known_sections,
                       "comma-separated sections of " + ", ".join(ROBUSTNESS_SECTIONS)
                       + " ('' = none)"),
    "robustness_examples": Rule(INT, 1000, _at_least(0), ">= 0 (0 = the whole test split)"),
    "attack_eps": Rule((tuple, list), "'(1,2,8)'",
                       lambda v: len(v) > 0 and all(isinstance(e, (int, float))
                                                     and not isinstance(e, bool) and e >= 0
                                                     for e in v),
                       "a non-empty list of radii >= 0 in 1/255"),
    "pgd_steps": Rule(INT, 10, _at_least(1), ">= 1"),
}


def _type_name(kind) -> str:
  kinds = kind if isinstance(kind, tuple) else (kind,)
  return " or ".join(k.__name__ for k in kinds)


def check_field(key: str, value: Any) -> None:
  """Raises UserError (one line, naming the fix) if `value` breaks RULES[key]."""
  rule = RULES[key]
  kinds = rule.kind if isinstance(rule.kind, tuple) else (rule.kind,)
  wrong_bool = isinstance(value, bool) and bool not in kinds
  if not isinstance(value, kinds) or wrong_bool:
    raise UserError(f"config.{key}={value!r} must be a {_type_name(rule.kind)}, e.g. "
                    f"--config.{key}={rule.example}")
  if rule.choices is not None:
    valid = rule.choices() if callable(rule.choices) else rule.choices
    if value not in valid:
      raise unknown_name(key, value, valid)
  elif not rule.ok(value):
    raise UserError(f"config.{key}={value!r} must be {rule.expect}, e.g. "
                    f"--config.{key}={rule.example}")


def _check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                prefix: str = "") -> None:
  for key in config.keys():
    if key not in reference:
      raise UserError(f"unknown config key {prefix + key!r}; valid keys: "
                      f"{', '.join(sorted(reference.keys()))}")
    if isinstance(reference[key], ml_collections.ConfigDict) and key != "model_kwargs":
      _check_keys(config[key], reference[key], prefix + key + ".")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError with the fix, or returns None."""
  _check_keys(config, default_config())
  # Fields checked without a registry first: those need no TensorFlow or flax
  # import, so most mistakes are reported within a second.
  static = [k for k in RULES if not callable(RULES[k].choices)]
  for key in static + [k for k in RULES if k not in static]:
    if key in config:
      check_field(key, config[key])
  if config.batch_size % config.grad_accum_steps:
    raise UserError(f"config.grad_accum_steps={config.grad_accum_steps} must divide "
                    f"config.batch_size={config.batch_size}; e.g. --config.grad_accum_steps=1")
  if config.sam_rho and config.grad_accum_steps > 1:
    raise UserError("config.sam_rho and config.grad_accum_steps > 1 do not combine (SAM needs "
                    "the whole batch's gradient twice); set --config.grad_accum_steps=1")
  if config.protocol == "paper" and config.validation_split:
    raise UserError("config.protocol='paper' reports the final model and holds nothing out: "
                    "set --config.validation_split='' or use --config.protocol=validation")
