"""Checkpoints in `<workdir>/checkpoints` with orbax.

One manager keeps the latest `keep` checkpoints plus the one with the best
validation accuracy. Each checkpoint holds the train state (params,
batch_stats, optimizer state, step), the running sums of the current epoch's
training metrics, and JSON metadata (the metric history and a fingerprint of
the model) so a resumed run continues exactly and a workdir that belongs to a
different model is refused instead of overwritten.

Orbax writes to a temporary directory and renames it when complete, so a
checkpoint half-written by a killed process (or cut short by a full disk) is
never taken as the latest; the trainer's manager deletes such leftovers when
it starts (`clean_up`), so they do not hold on to the space. A
complete checkpoint damaged later (a storage fault, a truncated file) is
moved aside to `<workdir>/damaged_checkpoints/<step>` (never deleted) by
`restore_newest_readable`, which resumes from the newest one that reads.
"""
import logging
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from cnn import workdir as workdirs
from cnn.errors import UserError

DAMAGED_DIR = "damaged_checkpoints"


def _val_accuracy(metrics: dict) -> float:
  return metrics["val_accuracy"]


def make_manager(workdir: str, keep: int, clean_up: bool = False) -> ocp.CheckpointManager:
  """`clean_up`: delete unfinished checkpoints (only the workdir's one trainer,
  which holds its lock, may: a reader could race a save in flight)."""
  policy = policies.AnyPreservationPolicy([
      policies.LatestN(n=keep),
      policies.BestN(get_metric_fn=_val_accuracy, n=1,
                     keep_checkpoints_without_metrics=False),
  ])
  # best_fn makes orbax store each checkpoint's metrics with it and read them
  # back when the manager is reopened: without it a resumed run forgets which
  # checkpoint was best and the policy deletes it (the preservation policy
  # alone decides what is kept).
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                         best_fn=_val_accuracy, best_mode="max",
                                         cleanup_tmp_directories=clean_up)
  directory = workdirs.resolve(workdir) / "checkpoints"  # a gs:// URI stays one
  return ocp.CheckpointManager(directory, options=options)


def open_for_reading(workdir: str) -> ocp.CheckpointManager:
  """A manager that only reads (it creates, cleans and deletes nothing)."""
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  return ocp.CheckpointManager(workdirs.resolve(workdir) / "checkpoints", options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, epoch_sums: Any,
         meta: dict, val_accuracy: float | None = None) -> None:
  """Saves asynchronously; `val_accuracy` marks an end-of-epoch checkpoint."""
  args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                            epoch_sums=ocp.args.StandardSave(epoch_sums),
                            meta=ocp.args.JsonSave(meta))
  metrics = None if val_accuracy is None else {"val_accuracy": val_accuracy}
  manager.save(step, args=args, metrics=metrics, force=True)


MARGIN_BYTES = 1 << 20  # metadata, indices and file-system blocks on top of the arrays


def bytes_needed(*trees: Any) -> int:
  """A checkpoint's size on disk, from above: its arrays plus 10% and 1 MiB."""
  arrays = sum(leaf.nbytes for tree in trees for leaf in jax.tree.leaves(tree)
               if hasattr(leaf, "nbytes"))
  return int(arrays * 1.1) + MARGIN_BYTES


def free_bytes(workdir: str) -> int | None:
  """Free space where `workdir` lives; None for an object store (no such number)."""
  if workdirs.is_uri(workdir):
    return None
  path = workdirs.resolve(workdir)
  while not path.exists():
    path = path.parent
  return shutil.disk_usage(str(path)).free


def what_is_kept(workdir: str) -> str:
  """`the last good checkpoint (step N) is kept`, for the error lines of a full disk."""
  steps = finalized_steps(workdir)
  return (f"the last good checkpoint (step {steps[-1]}) is kept" if steps
          else "no checkpoint was completed yet")


def space_error(workdir: str, step: int, needed: int, free: int) -> UserError:
  return UserError(f"no space for checkpoint step {step} in workdir {workdir} (needs about "
                   f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free); "
                   f"{what_is_kept(workdir)}: free space, then rerun the same command to resume")


def finalized_steps(workdir: str) -> list[int]:
  """The steps of the complete checkpoints on disk, read without orbax (which
  may be in a failed state when this is asked)."""
  directory = workdirs.resolve(workdir) / "checkpoints"
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


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


def move_aside(manager: ocp.CheckpointManager, workdir: str, step: int) -> str:
  """Moves a damaged checkpoint out of the manager's way (so training can
  save that step again) into `<workdir>/damaged_checkpoints/<step>`."""
  target_dir = workdirs.resolve(workdir) / DAMAGED_DIR
  target_dir.mkdir(parents=True, exist_ok=True)
  target = target_dir / str(step)
  suffix = 1
  while target.exists():
    target, suffix = target_dir / f"{step}.{suffix}", suffix + 1
  (manager.directory / str(step)).rename(target)
  return str(target)


def restore_newest_readable(manager: ocp.CheckpointManager, workdir: str, fingerprint: dict,
                            state: Any, epoch_sums: Any, is_primary: bool = True,
                            barrier=lambda: None) -> tuple[Any, Any, dict, int] | None:
  """(state, epoch_sums, meta, step) of the newest checkpoint that can be
  read, or None if there is none. A damaged one is moved aside by the primary
  process with a one-line warning naming its step; a checkpoint of another
  model is refused (UserError), as that is no damage. `barrier` lets the
  other processes wait for the move."""
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      meta = load_meta(manager, step)
      check_compatible(meta, fingerprint, workdir)
      restored_state, restored_sums, meta = restore(manager, step, state, epoch_sums)
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except (storage faults come in many types)
      where = move_aside(manager, workdir, step) if is_primary else "aside"
      barrier()
      reason = " ".join(str(e).split())[:160]
      logging.warning("checkpoint step %d in %s cannot be read (%s: %s); moved to %s, trying "
                      "the next newest", step, manager.directory, type(e).__name__, reason, where)
      damaged.append(step)
      manager.reload()
      continue
    return restored_state, restored_sums, meta, step
  if damaged:
    raise UserError(f"no readable checkpoint in {manager.directory}: steps "
                    f"{', '.join(map(str, damaged))} are damaged (moved to "
                    f"{workdirs.resolve(workdir) / DAMAGED_DIR}); rerun to start over, or put "
                    "back a good copy from a backup")
  return None
