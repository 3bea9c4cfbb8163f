"""Every setting of an experiment, declared once: its default, its meaning and
its check, next to the code that uses it; and the one reader of older saved
configs.

A config is a `ConfigDict` with the few settings nearly every run touches at
the top (`TOP`: seed, protocol, model, model_kwargs, num_epochs, batch_size,
learning_rate) and one section per concern (`config.data`, `config.augment`,
`config.layers`, `config.optim`, `config.schedule`, `config.eval`,
`config.robustness`, `config.checkpoint`, `config.log`, `config.backend`). Each section is a
`Section` constant named `CONFIG` in the module that owns its registry
(`cnn/optim.py` declares `optim` and `schedule` next to `OPTIMIZERS` and
`SCHEDULES`, ...); `OWNERS` lists those modules, so `configs/default.py` is
`default_config()` and `python -m cnn.settings` prints every setting.

Older configs were flat (`config.momentum`, `config.lr_schedule`, ...): each
section names the flat keys it replaced (`Section.renamed`), so `upgrade`
reads every saved config (results/*.json, weights headers, checkpoints) into
today's form, and a flat key in a config file or on the command line gets one
line naming its new place (`renamed_message`).
"""
import dataclasses
import functools
import importlib
from typing import Any, Callable, Mapping

import ml_collections

from cnn.errors import UserError

# The modules that declare a section (a `CONFIG` Section or a tuple of them).
OWNERS = ("cnn.datasets", "cnn.augment", "cnn.optim", "cnn.model_fn",
          "cnn.robustness", "cnn.checkpoint", "cnn.metric_writers", "cnn.backend", "cnn.seeds")


def unknown_value(path: str, value: Any, valid) -> UserError:
  """`unknown config.optim.name 'sgdd'; valid: adam, ..., sgd` (one line)."""
  return UserError(f"unknown config.{path} {value!r}; valid: {', '.join(sorted(valid))}")


@dataclasses.dataclass(frozen=True)
class Setting:
  """One knob. `default` also fixes its type (an int is accepted for a float,
  a list for a tuple). Either `choices` (names, or a function returning them:
  a registry) or `ok` (a predicate) with `expect` (what it means, for the
  error line); `example` is a good value for the fix (default: `default`)."""
  default: Any
  doc: str
  ok: Callable[[Any], bool] = lambda v: True
  expect: str = ""
  choices: tuple | Mapping | Callable[[], Any] | None = None
  example: Any = None

  def kinds(self) -> tuple[type, ...]:
    kind = type(self.default)
    return {int: (int,), float: (int, float), tuple: (tuple, list)}.get(kind, (kind,))

  def check(self, path: str, value: Any) -> None:
    """Raises UserError (one line, naming the fix) if `value` is not valid."""
    example = self.default if self.example is None else self.example
    if isinstance(example, tuple):
      example = "'(" + ",".join(map(str, example)) + ")'"
    kinds = self.kinds()
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
      names = " or ".join(k.__name__ for k in kinds)
      raise UserError(f"config.{path}={value!r} must be a {names}, e.g. --config.{path}={example}")
    if self.choices is not None:
      valid = self.choices() if callable(self.choices) else self.choices
      if value not in valid:
        raise unknown_value(path, value, valid)
    elif not self.ok(value):
      raise UserError(f"config.{path}={value!r} must be {self.expect}, e.g. "
                      f"--config.{path}={example}")


@dataclasses.dataclass(frozen=True)
class Section:
  """`config.<name>`: its settings, and the flat keys of older configs it
  replaced (old key -> key here; "model_kwargs.x" for one that lived there)."""
  name: str
  doc: str
  settings: Mapping[str, Setting]
  renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)


# Checks shared by the sections.
def at_least(low: float) -> Callable[[Any], bool]:
  return lambda v: v >= low


def between(low: float, high: float, high_open: bool = True) -> Callable[[Any], bool]:
  return lambda v: low <= v < high if high_open else low <= v <= high


def positive(v) -> bool:
  return v > 0


def _models():
  from cnn.models import registry  # pylint: disable=import-outside-toplevel (flax)
  return registry()


PROTOCOLS = ("validation", "paper")
TOP = Section("", "the experiment", {
    "seed": Setting(0, "every random stream: initialisation, dropout, data order, "
                    "augmentation", at_least(0), ">= 0"),
    "protocol": Setting("validation", "how the reported test accuracy is chosen: "
                        "'validation' = the epoch with the best accuracy on "
                        "data.validation_split (held out of train); 'paper' = train on the full "
                        "training split and report the final model (no selection)",
                        choices=PROTOCOLS),
    "model": Setting("resnet20_v1", "a registered model name (cnn/models/)", choices=_models),
    "model_kwargs": Setting(ml_collections.ConfigDict(), "architecture arguments of the model, "
                            "e.g. {'shortcut': 'zero_pad'}", example="{}"),
    "num_epochs": Setting(182, "passes over the training split (182 = 64k iterations of "
                          "batch 128 on 45k images)", positive, "> 0", example=30),
    "batch_size": Setting(128, "global, over all devices and hosts", positive, "> 0"),
    "learning_rate": Setting(0.1, "peak, for the global batch", positive, "> 0"),
})


@functools.cache
def sections() -> tuple[Section, ...]:
  """The sections, in `OWNERS` order (imports their modules)."""
  found: list[Section] = []
  for owner in OWNERS:
    declared = importlib.import_module(owner).CONFIG
    found.extend(declared if isinstance(declared, tuple) else (declared,))
  return tuple(found)


def defaults(section: Section) -> ml_collections.ConfigDict:
  """The section's settings at their defaults (a fresh copy)."""
  return ml_collections.ConfigDict(
      {k: (s.default.copy_and_resolve_references() if isinstance(
          s.default, ml_collections.ConfigDict) else s.default)
       for k, s in section.settings.items()})


def default_config() -> ml_collections.ConfigDict:
  """Every setting at its default: what `configs/default.py` returns."""
  config = defaults(TOP)
  for section in sections():
    config[section.name] = defaults(section)
  return config


@functools.cache
def renames() -> dict[str, str]:
  """Flat key of an older config -> its dotted place today."""
  return {old: f"{s.name}.{new}" for s in sections() for old, new in s.renamed.items()}


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
`OWNERS`); configs saved before the sections (flat keys such as
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
