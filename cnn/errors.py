"""The one exception type the command line turns into a single-line message,
and recognising the storage errors that become one."""
import errno


class UserError(Exception):
  """A mistake the user can fix: bad config, missing data, incompatible workdir.

  `main.py` prints `error: <message>` and exits with status 2 instead of a
  traceback, so the message must name the fix.
  """


def unknown_name(kind: str, name: str, valid) -> UserError:
  """`unknown model 'resnt20'; valid: resnet20_v1, ...` style error."""
  return UserError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")


class Preempted(Exception):
  """SIGTERM (or a multi-host preemption notice) arrived; a checkpoint of the
  current step was saved and rerunning the same command resumes from it."""


DISK_FULL_TEXTS = ("No space left on device", "os_error_code='28'", "Disk quota exceeded")


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an exception it was raised from, is a full disk or an
  exhausted quota: an OSError with ENOSPC/EDQUOT, or the same reported as text
  by TensorStore (orbax's array writer wraps it in a ValueError)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(text in str(error) for text in DISK_FULL_TEXTS):
      return True
    error = error.__cause__ or error.__context__
  return False
