"""Checkpoints in `<workdir>/checkpoints` with orbax.

One manager keeps the latest `keep` checkpoints plus the one with the best
validation accuracy. Each checkpoint holds the train state (params,
batch_stats, optimizer state, step), the running sums of the current epoch's
training metrics, and JSON metadata (the metric history and a fingerprint of
the model) so a resumed run continues exactly and a workdir that belongs to a
different model is refused instead of overwritten.

Orbax writes to a temporary directory and renames it when complete, so a
checkpoint half-written by a killed process is never taken as the latest.
"""
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from cnn import workdir as workdirs
from cnn.errors import UserError


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  policy = policies.AnyPreservationPolicy([
      policies.LatestN(n=keep),
      policies.BestN(get_metric_fn=lambda m: m["val_accuracy"], n=1,
                     keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
  directory = workdirs.resolve(workdir) / "checkpoints"  # a gs:// URI stays one
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, epoch_sums: Any,
         meta: dict, val_accuracy: float | None = None) -> None:
  """Saves asynchronously; `val_accuracy` marks an end-of-epoch checkpoint."""
  args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                            epoch_sums=ocp.args.StandardSave(epoch_sums),
                            meta=ocp.args.JsonSave(meta))
  metrics = None if val_accuracy is None else {"val_accuracy": val_accuracy}
  manager.save(step, args=args, metrics=metrics, force=True)


def load_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def check_compatible(meta: dict, fingerprint: dict, workdir: str) -> None:
  """Refuses to resume a checkpoint of another model, dataset or shape."""
  stored = meta.get("fingerprint", {})
  diff = {k: (stored.get(k), v) for k, v in fingerprint.items() if stored.get(k) != v}
  if diff:
    what = "; ".join(f"{k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in diff.items())
    raise UserError(f"workdir {workdir} holds an incompatible checkpoint ({what}); "
                    "use a new --workdir (nothing was overwritten)")


def restore(manager: ocp.CheckpointManager, step: int, state: Any, epoch_sums: Any = None
            ) -> tuple[Any, Any, dict]:
  """Restores into the structure, dtypes and shardings of `state`/`epoch_sums`;
  without `epoch_sums` (evaluation) only the state and metadata are read."""
  items = {"state": ocp.args.StandardRestore(state), "meta": ocp.args.JsonRestore()}
  if epoch_sums is not None:
    items["epoch_sums"] = ocp.args.StandardRestore(epoch_sums)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return restored["state"], restored.get("epoch_sums"), restored["meta"]
