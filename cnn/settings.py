"""Every setting of an experiment, declared once: its default, its meaning and
its check, next to the code that uses it; and the one reader of older saved
configs.

A config is a `ConfigDict` with the few settings nearly every run touches at
the top (`TOP`: seed, protocol, model, model_kwargs, num_epochs, batch_size,
learning_rate) and one section per concern (`config.data`, `config.augment`,
`config.layers`, `config.optim`, `config.schedule`, `config.eval`,
`config.robustness`, `config.checkpoint`, `config.log`, `config.backend`,
`config.sweep`). Each section is a `Section` (cnn/schema.py) declared in the
module that owns its registry (`cnn/optim.py` declares `optim` and `schedule`
next to `OPTIMIZERS` and `SCHEDULES`, ...); this module sits above them all
and gathers them (`SECTIONS`), so `configs/default.py` is `default_config()`
and `python -m cnn.settings` prints every setting. Nothing it imports imports
it back: the owners know only the vocabulary.

Older configs were flat (`config.momentum`, `config.lr_schedule`, ...): each
section names the flat keys it replaced (`Section.renamed`), so `upgrade`
reads every saved config (results/*.json, weights headers, checkpoints) into
today's form, and a flat key in a config file or on the command line gets one
line naming its new place (`renamed_message`).
"""
from typing import Any, Mapping

import ml_collections

from cnn import (augment, backend, checkpoint, datasets, metric_writers, model_fn, optim,
                 robustness, seeds)
from cnn.errors import UserError
from cnn.models import registry
from cnn.schema import Section, Setting, at_least, defaults, positive


PROTOCOLS = ("validation", "paper")
TOP = Section("", "the experiment", {
    "seed": Setting(0, "every random stream: initialisation, dropout, data order, "
                    "augmentation", at_least(0), ">= 0"),
    "protocol": Setting("validation", "how the reported test accuracy is chosen: "
                        "'validation' = the epoch with the best accuracy on "
                        "data.validation_split (held out of train); 'paper' = train on the full "
                        "training split and report the final model (no selection)",
                        choices=PROTOCOLS),
    "model": Setting("resnet20_v1", "a registered model name (cnn/models/)", choices=registry),
    "model_kwargs": Setting(ml_collections.ConfigDict(), "architecture arguments of the model, "
                            "e.g. {'shortcut': 'zero_pad'}", example="{}"),
    "num_epochs": Setting(182, "passes over the training split (182 = 64k iterations of "
                          "batch 128 on 45k images)", positive, "> 0", example=30),
    "batch_size": Setting(128, "global, over all devices and hosts", positive, "> 0"),
    "learning_rate": Setting(0.1, "peak, for the global batch", positive, "> 0"),
})


# Every section, in the order of `configs/default.py` and docs/configuration.md.
SECTIONS: tuple[Section, ...] = (
    datasets.CONFIG, augment.CONFIG, model_fn.LAYERS, *optim.CONFIG, model_fn.EVAL,
    robustness.CONFIG, checkpoint.CONFIG, metric_writers.CONFIG, backend.CONFIG, seeds.CONFIG)


def sections() -> tuple[Section, ...]:
  return SECTIONS


def default_config() -> ml_collections.ConfigDict:
  """Every setting at its default: what `configs/default.py` returns."""
  config = defaults(TOP)
  for section in sections():
    config[section.name] = defaults(section)
  return config


def renames() -> dict[str, str]:
  """Flat key of an older config -> its dotted place today."""
  return RENAMES


RENAMES = {old: f"{s.name}.{new}" for s in SECTIONS for old, new in s.renamed.items()}


def renamed_message(old: str) -> str | None:
  """One line naming the new key of a flat key that moved, or None."""
  new = renames().get(old)
  return (f"config.{old} is now config.{new}: use --config.{new}=... (or config.{new} = ... "
          "in a config file)") if new else None


def _unknown_key(path: str, valid) -> UserError:
  return UserError(renamed_message(path) or f"unknown config key {path!r}; valid keys: "
                   f"{', '.join(sorted(valid))}")


def check(config: ml_collections.ConfigDict) -> None:
  """Raises UserError (one line, naming the fix) for an unknown or moved key
  or a value that breaks its setting's rule."""
  by_name = {s.name: s for s in sections()}
  for key in config.keys():
    if key in by_name and isinstance(config[key], ml_collections.ConfigDict):
      section = by_name[key]
      for sub in config[key].keys():
        if sub not in section.settings:
          raise _unknown_key(f"{key}.{sub}", [f"{key}.{k}" for k in section.settings])
    elif key not in TOP.settings:
      raise _unknown_key(key, [*TOP.settings, *by_name])
  for key, setting in TOP.settings.items():
    if key in config:
      setting.check(key, config[key])
  for key in config.get("model_kwargs", {}).keys():
    if f"model_kwargs.{key}" in renames():
      raise _unknown_key(f"model_kwargs.{key}", ())
  for name, section in by_name.items():
    if name not in config:
      continue
    if not isinstance(config[name], ml_collections.ConfigDict):
      raise UserError(f"config.{name} is a section, not a value: set its keys, e.g. "
                      f"--config.{name}.{next(iter(section.settings))}=...")
    for key, setting in section.settings.items():
      if key in config[name]:
        setting.check(f"{name}.{key}", config[name][key])


def upgrade(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A saved config of any age (flat or in sections, possibly without keys
  added since) as today's config: moved keys in their sections, missing ones
  at their defaults, keys no longer known dropped. The one reader of saved
  configs: results/*.json, weights headers, checkpoints."""
  config = default_config()
  saved = dict(saved.to_dict() if isinstance(saved, ml_collections.ConfigDict) else saved)
  kwargs = dict(saved.pop("model_kwargs", None) or {})
  for key, value in kwargs.items():
    moved = renames().get(f"model_kwargs.{key}")
    if moved:
      saved.setdefault(moved, value)
    else:
      config.model_kwargs[key] = value
  for key, value in saved.items():
    target = renames().get(key, key)
    if isinstance(value, Mapping) and key in config and isinstance(
        config[key], ml_collections.ConfigDict):
      for sub, v in value.items():
        if sub in config[key]:
          config[key][sub] = _typed(config[key][sub], v)
    elif "." in target:
      section, sub = target.split(".", 1)
      config[section][sub] = _typed(config[section][sub], value)
    elif target in TOP.settings:
      config[target] = _typed(config[target], value)
  return config


def _typed(default: Any, value: Any) -> Any:
  """JSON gives lists and ints: back to the default's tuple or float."""
  if isinstance(default, tuple) and isinstance(value, list):
    return tuple(value)
  if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  return value


def upgrade_override(flag: str) -> str:
  """A recorded command-line override (`--config.warmup_epochs=0.4`) in
  today's form (`--config.schedule.warmup_epochs=0.4`); others unchanged."""
  if not flag.startswith("--config."):
    return flag
  key, sep, value = flag[len("--config."):].partition("=")
  return f"--config.{renames().get(key, key)}{sep}{value}"


def architecture_kwargs(model_kwargs: Mapping[str, Any]) -> dict:
  """`model_kwargs` without the layer settings older configs kept there (a
  checkpoint's fingerprint compares the architecture only)."""
  return {k: v for k, v in dict(model_kwargs).items() if f"model_kwargs.{k}" not in renames()}


def upgrade_fingerprint(stored: dict) -> dict:
  """A checkpoint's stored fingerprint with its `model_kwargs` as today's
  (`architecture_kwargs`): what `checkpoint.check_compatible` compares."""
  if "model_kwargs" in stored:
    stored = {**stored, "model_kwargs": architecture_kwargs(stored["model_kwargs"])}
  return stored


def reference() -> str:
  """Every setting as markdown: key, default, meaning (`python -m cnn.settings`)."""
  lines = ["| setting | default | meaning |", "|---|---|---|"]
  for section in (TOP, *sections()):
    prefix = f"{section.name}." if section.name else ""
    for key, s in section.settings.items():
      default = "{}" if isinstance(s.default, ml_collections.ConfigDict) else repr(s.default)
      meaning = s.doc
      if s.choices is not None and not callable(s.choices):
        meaning += f" (valid: {', '.join(sorted(s.choices))})"
      meaning = meaning.replace("|", "\\|")
      lines.append(f"| `{prefix}{key}` | `{default}` | {meaning} |")
  return "\n".join(lines)


REFERENCE_PAGE = "docs/configuration.md"
REFERENCE_HEAD = """# Configuration: every setting

Generated from the declarations (`python -m cnn.settings --write`; a test
checks it is current). A config file starts from `configs/default.py` and
sets a few of these; the command line overrides any of them with
`--config.<setting>=<value>`, e.g. `--config.optim.weight_decay=5e-4`. Each
section is declared next to the code that uses it (`cnn/settings.py`,
`SECTIONS`); configs saved before the sections (flat keys such as
`weight_decay`) are read by `settings.upgrade`, and a flat key given today
gets one line naming its new place.

"""


if __name__ == "__main__":
  import sys  # pylint: disable=import-outside-toplevel
  if sys.argv[1:] == ["--write"]:
    with open(REFERENCE_PAGE, "w", encoding="utf-8") as f:
      f.write(REFERENCE_HEAD + reference() + "\n")
  else:
    print(reference())
