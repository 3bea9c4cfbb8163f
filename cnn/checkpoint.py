"""Checkpoints in `<workdir>/checkpoints` with orbax.

One manager keeps the latest `keep` checkpoints plus the one with the best
validation accuracy. Each checkpoint holds the train state (params,
batch_stats, optimizer state, step), the running sums of the current epoch's
training metrics, and JSON metadata (the metric history and a fingerprint of
the model) so a resumed run continues exactly and a workdir that belongs to a
different model is refused instead of overwritten.

Orbax writes to a temporary directory and renames it when complete, so a
checkpoint half-written by a killed process (or cut short by a full disk) is
never taken as the latest. Any byte on disk may still be wrong later (a
storage fault, a copy cut short), so the trainer reads every checkpoint in
full through orbax before it builds its manager (`open_for_training`; the
manager itself reads each step's metrics and crashes on a damaged one): a
step that does not read, and any unfinished write, is moved aside to
`<workdir>/damaged_checkpoints/` (never deleted) with one warning line, and
training resumes from the newest step that reads. Readers (the predictor,
the report) read the one step they need the same way and name it in one
error line if it is damaged; they move nothing.
"""
import gc
import json
import logging
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
import tensorstore as ts
from orbax.checkpoint import checkpoint_managers as policies

from cnn import workdir as workdirs
from cnn.errors import UserError
from cnn.schema import Section, Setting, at_least

STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's per-step metadata file (its commit time)
METRICS = "metrics"  # the item (and file) holding an end-of-epoch checkpoint's val_accuracy


CONFIG = Section("checkpoint", "when a run saves itself and what it keeps", {
    "every_epochs": Setting(1, "save at the end of every this many epochs; 0 = only at the run's "
                            "end (and when stopped: SIGTERM). Each save drains the device's "
                            "queue: 0 for a GPU's second-long epochs (docs/performance.md)",
                            at_least(0), ">= 0 (0 = the run's end only)", example=0),
    "every_steps": Setting(0, "save every this many steps too; 0 = only at the ends of epochs",
                           at_least(0), ">= 0 (0 = at epoch ends only)", example=1000),
    "keep": Setting(2, "latest checkpoints kept, besides the best by validation", at_least(1),
                    ">= 1"),
}, renamed={"checkpoint_every_steps": "every_steps", "keep_checkpoints": "keep"})


def due(step: int, steps_per_epoch: int, total_steps: int, every_epochs: int,
        every_steps: int) -> bool:
  """Whether the state after `step` steps is saved: at the run's last step
  (a finished run is resumed, read and recorded from it), at the end of every
  `every_epochs`-th epoch, and every `every_steps` steps (0: neither)."""
  epoch, offset = divmod(step, steps_per_epoch)
  return (step == total_steps or bool(every_steps and step % every_steps == 0)
          or (offset == 0 and every_epochs > 0 and epoch % every_epochs == 0))


def check_every_epochs(every_epochs: int, reports_final_model: bool) -> None:
  """Refuses fewer than one save per epoch where the run reports its best
  epoch by validation: that epoch's checkpoint must be kept to be tested."""
  if every_epochs != 1 and not reports_final_model:
    raise UserError(f"config.checkpoint.every_epochs={every_epochs} skips epochs, but "
                    "config.protocol='validation' tests the best epoch's checkpoint; set "
                    "--config.checkpoint.every_epochs=1 or use --config.protocol=paper")


def _val_accuracy(metrics: dict) -> float:
  return metrics["val_accuracy"]


def make_manager(workdir: str, keep: int, track_best: bool = True) -> ocp.CheckpointManager:
  """The trainer's manager; build it with `open_for_training`, which first
  moves aside what orbax would crash on or delete. `track_best`: the run has a
  validation split, so its end-of-epoch checkpoints carry a val_accuracy and
  the best one is kept beside the newest `keep`; without one (the paper
  protocol) there is no metric to track, and orbax would warn at every save."""
  directory = workdirs.Workdir.of(workdir).checkpoints  # a gs:// URI stays one
  if not track_best:
    options = ocp.CheckpointManagerOptions(preservation_policy=policies.LatestN(n=keep),
                                           create=True)
    return ocp.CheckpointManager(directory, options=options)
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
                                         best_fn=_val_accuracy, best_mode="max")
  return ocp.CheckpointManager(directory, options=options)


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
  path = workdirs.Workdir.of(workdir).path
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
  directory = workdirs.Workdir.of(workdir).checkpoints
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def check_compatible(meta: dict, fingerprint: dict, workdir: str,
                     upgrade: Callable[[dict], dict] = dict) -> None:
  """Refuses to resume a checkpoint of another model, dataset or shape; the
  stored fingerprint is read through `upgrade` (older runs kept layer settings
  in model_kwargs: settings.upgrade_fingerprint)."""
  stored = upgrade(dict(meta.get("fingerprint", {})))
  diff = {k: (stored.get(k), v) for k, v in fingerprint.items() if stored.get(k) != v}
  if diff:
    what = "; ".join(f"{k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in diff.items())
    raise UserError(f"workdir {workdir} holds an incompatible checkpoint ({what}); "
                    "use a new --workdir (nothing was overwritten)")


class Damaged(Exception):
  """A checkpoint step that does not read; `reason` is one line."""

  def __init__(self, step: int, reason: str):
    super().__init__(f"step {step}: {reason}")
    self.step, self.reason = step, reason


def _one_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"


def step_dir(workdir: str, step: int):
  return workdirs.Workdir.of(workdir).checkpoint(step)


def _restore_args(item: Any) -> ocp.args.CheckpointArgs:
  return item if isinstance(item, ocp.args.CheckpointArgs) else ocp.args.StandardRestore(item)


def _check_step_metadata(directory) -> None:
  """The manager reads each step's metadata file as it opens, and only logs errors for a
  damaged one: read it first."""
  try:
    json.loads((directory / STEP_METADATA).read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{STEP_METADATA}: {e}") from None


def _kvstore_spec(item_dir) -> dict:
  path = str(item_dir).rstrip("/") + "/"
  if path.startswith("gs://"):
    bucket, _, rest = path[len("gs://"):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": rest}
  return {"driver": "file", "path": path}


ZARR_DRIVERS = {"/.zarray": "zarr", "/zarr.json": "zarr3"}  # how orbax may store an array
ITEM_JSON = ("_METADATA", "_sharding", "array_metadatas/*")  # an array item's JSON files


def _read_every_array(item_dir) -> None:
  """Reads every array of an item (orbax's OCDBT store of zarr arrays) in
  full with tensorstore, one at a time: damage to a manifest, an index or a
  chunk is found here, before orbax starts its concurrent reads, whose
  siblings of a failed read would go on after its event loop closed and print
  tracebacks."""
  for pattern in ITEM_JSON:  # orbax reads these for each array, concurrently too
    for path in item_dir.glob(pattern):
      try:
        json.loads(path.read_text())
      except (OSError, ValueError) as e:
        raise ValueError(f"{item_dir.name}/{pattern}: {e}") from None
  kvstore = {"driver": "ocdbt", "base": _kvstore_spec(item_dir)}
  keys = ts.KvStore.open(kvstore).result().list().result()
  if not keys:  # a store whose manifest is gone opens empty
    raise ValueError(f"{item_dir.name}: no arrays (manifest.ocdbt missing)")
  for key in sorted(k.decode() for k in keys):
    for suffix, driver in ZARR_DRIVERS.items():
      if key.endswith(suffix):
        spec = {"driver": driver, "kvstore": {**kvstore, "path": key[:-len(suffix)] + "/"},
                "fill_missing_data_reads": False}
        ts.open(spec, open=True, read=True).result().read().result()


def read(workdir: str, step: int, state: Any = None, epoch_sums: Any = None, meta: bool = False,
         metrics: bool = False) -> dict:
  """Reads items of one step through orbax: `state`/`epoch_sums` (a tree of
  arrays or ShapeDtypeStructs to restore into, or orbax restore args), the
  `meta` JSON and (end-of-epoch steps) the `metrics`. Raises `Damaged` if any
  byte it needs is wrong: orbax and tensorstore check the JSON files, the
  manifests and every compressed chunk (tests/test_damaged_checkpoint.py
  damages each file of a real checkpoint in four ways)."""
  directory = step_dir(workdir, step)
  args = {name: _restore_args(item) for name, item in (("state", state),
                                                       ("epoch_sums", epoch_sums))
          if item is not None}
  if meta:
    args["meta"] = ocp.args.JsonRestore()
  try:
    _check_step_metadata(directory)
    for name in args:
      if name != "meta":
        _read_every_array(directory / name)
    restored = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
        directory, args=ocp.args.Composite(**args))
    out = {name: restored[name] for name in args}
    if metrics and (directory / METRICS).exists():
      out[METRICS] = ocp.Checkpointer(ocp.JsonCheckpointHandler(filename=METRICS)).restore(
          directory / METRICS)
    return out
  except Exception as e:  # pylint: disable=broad-except (storage faults come in many types)
    gc.collect()  # orbax's unawaited reads of the other arrays end (and log) here
    raise Damaged(step, _one_line(e)) from None


def read_for_reader(workdir: str, step: int, **items: Any) -> dict:
  """`read` for the predictor and the report: a damaged step is one error line."""
  try:
    return read(workdir, step, **items)
  except Damaged as e:
    raise UserError(f"checkpoint step {step} in {workdirs.Workdir.of(workdir).checkpoints} "
                    f"cannot be read ({e.reason}); rerun the training command to move it "
                    "aside and resume from the newest good one") from None


def unfinished(workdir: str) -> list[str]:
  """Names in `<workdir>/checkpoints` that are no finished step (orbax's
  temporary folders of a save cut short, or anything else)."""
  directory = workdirs.Workdir.of(workdir).checkpoints
  if not directory.exists():
    return []
  return sorted(p.name for p in directory.iterdir() if not p.name.isdigit())


def move_aside(workdir: str, name: str) -> str:
  """Moves `<workdir>/checkpoints/<name>` out of the manager's way (so training
  can save that step again) into `<workdir>/damaged_checkpoints/<name>`."""
  target_dir = workdirs.Workdir.of(workdir).damaged_checkpoints
  target_dir.mkdir(parents=True, exist_ok=True)
  target = target_dir / name
  suffix = 1
  while target.exists():
    target, suffix = target_dir / f"{name}.{suffix}", suffix + 1
  (workdirs.Workdir.of(workdir).checkpoints / name).rename(target)
  return str(target)


def open_for_training(workdir: str, keep: int, fingerprint: dict, state: Any, epoch_sums: Any,
                      is_primary: bool = True, barrier: Callable[[], None] = lambda: None,
                      upgrade: Callable[[dict], dict] = dict, track_best: bool = True
                      ) -> tuple[ocp.CheckpointManager, tuple[Any, Any, dict, int] | None]:
  """The trainer's manager, and (state, epoch_sums, meta, step) of the newest
  checkpoint that reads (None: there is none).

  Every step is read in full first, newest first (the newest into `state`'s
  structure, dtypes and shardings; older ones too, as the manager reads their
  metrics and the validation protocol restores the best one at the end). A
  step that does not read and every unfinished write is moved aside by the
  primary process, with one warning line each; a checkpoint of another model
  is refused (UserError), as that is no damage (its fingerprint read through
  `upgrade`, see `check_compatible`). `barrier` lets the other processes wait
  for the moves; `track_best` as in `make_manager`."""
  directory = workdirs.Workdir.of(workdir).checkpoints
  for name in unfinished(workdir):
    where = move_aside(workdir, name) if is_primary else "aside"
    logging.warning("unfinished checkpoint write %s in %s (a save cut short); moved to %s",
                    name, directory, where)
  restored, damaged = None, []
  for step in reversed(finalized_steps(workdir)):
    try:
      meta = read(workdir, step, meta=True)["meta"]  # first: another model's is no damage
      if restored is None:
        check_compatible(meta, fingerprint, workdir, upgrade)
      items = read(workdir, step, state=state, epoch_sums=epoch_sums, metrics=True)
    except Damaged as e:
      where = move_aside(workdir, str(step)) if is_primary else "aside"
      logging.warning("checkpoint step %d in %s cannot be read (%s); moved to %s%s", step,
                      directory, e.reason, where, "" if restored else ", trying the next newest")
      damaged.append(step)
      continue
    if restored is None:
      restored = items["state"], items["epoch_sums"], meta, step
  barrier()  # every process, moved or not, so none waits alone
  if restored is None and damaged:
    raise UserError(f"no readable checkpoint in {directory}: "
                    f"{'steps' if len(damaged) > 1 else 'step'} {', '.join(map(str, damaged))} "
                    f"{'are' if len(damaged) > 1 else 'is'} damaged (moved to "
                    f"{workdirs.Workdir.of(workdir).damaged_checkpoints}); rerun to start over, "
                    "or put back a good copy from a backup")
  return make_manager(workdir, keep, track_best), restored
