"""tfds's split strings ("train", "train[:45000]", "test[-10%:]") without tfds.

The archive reader selects examples with exactly the rules of
`tfds.core.ReadInstruction` (absolute or percent bounds, percent rounded to
the closest example, negative bounds from the end, out of range refused), so
a config means the same images whichever reader runs it.
"""
import re

from cnn.errors import UserError

_SPLIT = re.compile(r"^(?P<name>[\w-]+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


def _bound(token: str | None, num_examples: int, default: int) -> int:
  if token is None:
    return default
  if token.endswith("%"):
    return int(round(int(token[:-1]) * num_examples / 100.0))
  return int(token)


def select(split: str, sizes: dict[str, int]) -> tuple[str, slice]:
  """(split name, slice of its examples) for `split`, given each split's size."""
  found = _SPLIT.match(split.replace(" ", ""))
  if not found:
    raise UserError(f"bad split {split!r}: write NAME or NAME[START:STOP], e.g. train[:45000] "
                    "or train[90%:]")
  name = found.group("name")
  if name not in sizes:
    raise UserError(f"bad split {split!r}: no split {name!r}; valid: {', '.join(sizes)}")
  n = sizes[name]
  start = _bound(found.group("start"), n, 0)
  stop = _bound(found.group("stop"), n, n)
  if abs(start) > n or abs(stop) > n:
    raise UserError(f"bad split {split!r}: the slice is outside the {n} examples of {name!r}")
  return name, slice(start % n if start < 0 else start, stop % n if stop < 0 else stop)
