"""The vocabulary of a config: `Setting` (one knob: its default, meaning and
check) and `Section` (`config.<name>`: its settings, and the flat keys of
older configs it replaced), with the checks the sections share.

A leaf: each module that owns a section declares it with these, next to the
code that uses it (`cnn/optim.py` declares `optim` and `schedule` beside
`OPTIMIZERS` and `SCHEDULES`, ...); `cnn/settings.py` gathers the sections.
"""
import dataclasses
from typing import Any, Callable, Mapping

import ml_collections

from cnn.errors import UserError


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


def defaults(section: Section) -> ml_collections.ConfigDict:
  """The section's settings at their defaults (a fresh copy)."""
  return ml_collections.ConfigDict(
      {k: (s.default.copy_and_resolve_references() if isinstance(
          s.default, ml_collections.ConfigDict) else s.default)
       for k, s in section.settings.items()})
