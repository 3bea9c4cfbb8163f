"""The one exception type the command line turns into a single-line message."""


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
