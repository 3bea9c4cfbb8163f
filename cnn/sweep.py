"""Seed sweeps: the seeds of `config.sweep.seeds` trained as one job.

Each seed is exactly the run that seed would be alone (`seeds.seed_config`:
its own initialisation, data order, augmentation draws and dropout), in its
own workdir `<workdir>/seed_<s>/` (checkpoints, metrics, `results.json`:
everything else reads it as any run's), resumable after kill -9 like any run.
`<workdir>/sweep.json` summarises them (`seeds.summary`: mean, standard
deviation, range, 95 % Student-t interval of the test accuracy).

Two placements (`config.sweep.placement`):

- `sequential`: one seed after another, each `train.train_and_evaluate` on
  every device. A finished seed (its `results.json`) is not trained again.
- `vmap`: the seeds' train states stacked on a leading seed axis and one
  jitted `jax.vmap` of `train.train_step` trains them all (BatchNorm
  statistics, optimiser state and random streams per seed). The devices form
  a 2-D mesh (`seed`, `data`): the stacked state is split along `seed`, each
  seed's batch along `data`, so 8 GPUs train 8 seeds side by side, or 4 seeds
  x 2-way data parallel, or all seeds on each device. `SeedStack` is a
  `train.TrainingRun` of `train.train_epochs` (the one training loop); at every
  sync point (a progress line, a checkpoint, an epoch's end) it hands each
  seed's slice back to that seed's own `Run`, which evaluates, checkpoints and
  writes its metrics exactly as alone.

A sweep killed mid-save can leave one seed a checkpoint ahead of the others:
on resume that step is moved aside (`damaged_checkpoints/`, never deleted)
and retrained with the rest, so every seed resumes from the same step.
"""
import contextlib
import functools
import json
import logging
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from cnn import checkpoint, distributed, preemption, seeds as seedlib, train
from cnn import workdir as workdirs
from cnn import workdir_lock
from cnn.errors import UserError


def placement_for(config: ml_collections.ConfigDict, backend: str) -> str:
  """`config.sweep.placement`, with 'auto' decided: vmap on GPU/TPU, and
  sequential on the CPU, where a stacked step is no faster than the seeds one
  after another (benchmarks/seed_sweep.py; docs/experiments.md)."""
  placement = config.sweep.placement
  if placement == "auto":
    return "sequential" if backend == "cpu" else "vmap"
  return placement


def seed_mesh(devices: np.ndarray, num_seeds: int, seed_devices: int) -> Mesh:
  """The (seed, data) mesh over `devices` (in the 1-D data mesh's order);
  `seed_devices` 0 = the largest size dividing both the devices and the seeds."""
  count = devices.size
  size = seed_devices or math.gcd(num_seeds, count)
  if count % size or num_seeds % size:
    raise UserError(f"config.sweep.seed_devices={size} must divide both the {count} devices and "
                    f"the {num_seeds} seeds to train; e.g. --config.sweep.seed_devices=0 (auto)")
  return Mesh(devices.reshape(size, count // size), ("seed", "data"),
              axis_types=(AxisType.Auto, AxisType.Auto))


def to_host(tree: Any) -> Any:
  """Numpy copies of (possibly seed-sharded, multi-host) arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def stacked_train_step(states, sums, batches: list[dict], seeds: jax.Array,
                       dropout_keys: jax.Array, *, settings: dict, batch_sharding: NamedSharding):
  """`train.train_step` of every seed at once: `states`/`sums` stacked on a
  leading seed axis, `batches` one global batch per seed (each exactly the
  batch that seed's run alone would get), `dropout_keys` the seeds' dropout
  keys as `jax.random.key_data` (plain integers travel to every host)."""
  batch = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
  batch = lax.with_sharding_constraint(batch, batch_sharding)
  one = functools.partial(train.train_step, **settings)
  return jax.vmap(lambda st, su, b, seed, key: one(
      st, su, b, seed=seed, dropout_key=jax.random.wrap_key_data(key)))(
          states, sums, batch, seeds, dropout_keys)


class SeedStack:
  """The runs of a vmapped sweep as one `train.TrainingRun` for
  `train.train_epochs`: their states and epoch sums stacked on a leading seed
  axis, split over the mesh's `seed` axis; each step trains every seed on its
  own batch. Every sync point hands each seed's slice back to its own Run
  (`sync`), which records, evaluates and checkpoints it."""

  def __init__(self, runs: list[train.Run], mesh: Mesh, workdir: workdirs.Workdir):
    self.runs = runs
    self.stacked = NamedSharding(mesh, P("seed"))
    exps = [r.exp for r in runs]
    first = exps[0]
    step = jax.jit(
        functools.partial(stacked_train_step, settings=first.step_settings,
                          batch_sharding=NamedSharding(mesh, P("seed", "data"))),
        in_shardings=(self.stacked, self.stacked, [first.batch_sharding] * len(runs),
                      self.stacked, self.stacked),
        out_shardings=(self.stacked,) * 3, donate_argnums=(0, 1))
    seeds = self.put(np.array([e.config.seed for e in exps], np.int32))
    keys = self.put(np.stack([jax.random.key_data(e.dropout_key) for e in exps]))
    self._step = lambda states, sums, batches: step(states, sums, batches, seeds, keys)
    self.pacing, self.checkpoints = first.pacing, str(workdir)
    self.state = self.stack([r.state for r in runs])
    self.sums = self.stack([r.sums for r in runs])
    # The batch losses since the last step record, one [seeds] array per step (a run resumed
    # mid-window restored its part of them).
    self.window = [self.put(np.array(step, np.float32)) for step in zip(*(r.window for r in runs))]

  @property
  def step(self) -> int:
    return self.runs[0].step

  def train_step(self, states, sums, batches: list[dict]):
    return self._step(states, sums, batches)

  def batches(self, epoch: int, start_step: int) -> Iterator[list[dict]]:
    """Each step's batch of every seed (each exactly the batch it gets alone)."""
    return map(list, zip(*(r.batches(epoch, start_step) for r in self.runs)))

  def reached_preemption(self, step: int) -> bool:
    return any(r.reached_preemption(step) for r in self.runs)

  def wait_for_saves(self) -> None:
    for r in self.runs:
      r.wait_for_saves()

  def host_sums(self) -> dict:
    """The seeds' running sums of the epoch ([seeds] each), read on every host."""
    return to_host(self.sums)

  def put(self, array: np.ndarray) -> jax.Array:
    return jax.make_array_from_callback(array.shape, self.stacked, lambda i: array[i])

  def stack(self, trees: list) -> Any:
    """Per-seed trees (on their runs' devices) -> one tree with a leading seed axis."""
    leaves = [jax.tree.leaves(to_host(t)) for t in trees]
    return jax.tree.unflatten(jax.tree.structure(trees[0]),
                              [self.put(np.stack(xs)) for xs in zip(*leaves)])

  def sync(self) -> None:
    """Each seed's slice of the stacked state, sums and window into its own Run."""
    state, sums, window = to_host((self.state, self.sums, self.window))
    window = np.asarray(window, np.float32).reshape(len(self.window), len(self.runs))
    for i, run in enumerate(self.runs):
      run.window = list(window[:, i])
      replicated = NamedSharding(run.exp.mesh, P())
      for name, tree, like in (("state", state, run.state), ("sums", sums, run.sums)):
        leaves = [x[i] for x in jax.tree.leaves(tree)]
        setattr(run, name, train.replicate(
            jax.tree.unflatten(jax.tree.structure(like), leaves), replicated))

  def close_window(self) -> None:
    self.sync()  # the record names each seed's step and learning rate
    for run in self.runs:
      run.close_window()
    self.window = []

  def save(self, val_accuracy: float | None = None) -> None:
    del val_accuracy  # mid-epoch saves only; each Run's end_epoch saves with its own
    self.sync()
    for run in self.runs:
      run.save()

  def end_epoch(self, epoch: int, train_seconds: float, timed_steps: int, started: float,
                save: bool = True) -> None:
    self.sync()
    for run in self.runs:
      run.end_epoch(epoch, train_seconds, timed_steps, started, save)
    self.sums = self.stack([run.sums for run in self.runs])


def seeds_ahead(workdirs_by_seed: dict[int, workdirs.Workdir]) -> int:
  """Moves aside each seed's checkpoints newer than every seed's newest (a
  sweep killed mid-save), so all resume from one step; returns that step.
  Refuses (nothing moved) where a seed ahead no longer has that step: a
  vmapped sweep trains its seeds in step."""
  steps = {s: checkpoint.finalized_steps(w) for s, w in workdirs_by_seed.items()}
  common = min((kept[-1] if kept else 0) for kept in steps.values())
  behind = sorted(s for s, kept in steps.items() if (kept[-1] if kept else 0) == common)
  for seed, kept in steps.items():
    if kept and kept[-1] > common and common not in kept:
      raise UserError(
          f"seed {seed} is at step {kept[-1]} but seed {behind[0]} at step {common}, and a "
          "vmapped sweep trains its seeds in step; finish them with "
          "--config.sweep.placement=sequential (each resumes where it is)")
  for seed, workdir in workdirs_by_seed.items():
    for step in steps[seed]:
      if step > common and jax.process_index() == 0:
        where = checkpoint.move_aside(workdir, str(step))
        logging.warning("seed %d: checkpoint step %d is ahead of the other seeds' newest (%d: the "
                        "sweep stopped mid-save); moved to %s, retrained with the others",
                        seed, step, common, where)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("sweep checkpoints aligned")
  return common


def finished(workdir: workdirs.Workdir, config: ml_collections.ConfigDict) -> dict | None:
  """The seed's results.json if it holds a finished run of exactly `config`."""
  if not workdir.results.exists():
    return None
  results = json.loads(workdir.results.read_text())
  same = json.loads(json.dumps(config.to_dict(), default=str))
  return results if results.get("config") == same else None


def train_stacked(configs: dict[int, ml_collections.ConfigDict], workdir: workdirs.Workdir,
                  seed_devices: int) -> tuple[dict[int, dict], dict]:
  """The vmap placement: every seed of `configs` (seed -> its config) in one
  SeedStack, on a mesh with `seed_devices` along its seed axis (0: `seed_mesh` chooses)."""
  first_config = next(iter(configs.values()))
  if first_config.layers.batchnorm == "per_device":
    raise UserError("config.layers.batchnorm='per_device' groups BatchNorm by device, which a "
                    "vmapped sweep does not keep; use --config.sweep.placement=sequential")
  dirs = {s: workdir.seed(s) for s in configs}
  for d in dirs.values():
    train.check_writable(d)
  with contextlib.ExitStack() as locks:
    for d in dirs.values():
      locks.enter_context(workdir_lock.one_trainer(d))
    first = train.Experiment(first_config)
    if first_config.data.on_device:
      first.device_data  # pylint: disable=pointless-statement (made once, shared by every seed)
    exps = {s: first if c is first_config else train.Experiment(c, shared=first)
            for s, c in configs.items()}
    mesh = seed_mesh(first.mesh.devices, len(configs), seed_devices)
    seeds_ahead(dirs)
    runs = []
    try:
      for s in configs:
        runs.append(train.Run(exps[s], dirs[s]))
      steps = {s: r.step for s, r in zip(configs, runs)}
      if len(set(steps.values())) > 1:  # a damaged step was moved aside in some of them
        raise UserError(f"the seeds resumed at different steps ({steps}); rerun to align them, "
                        "or train them one at a time with --config.sweep.placement=sequential")
      logging.info("sweep of %d seeds, vmapped on a %s mesh (%s)", len(runs), dict(mesh.shape),
                   distributed.describe())
      stack = SeedStack(runs, mesh, workdir)
      with preemption.sigterm_flag() as stop_requested:
        compile_time = train.train_epochs(stack, stop_requested)
      stack.sync()
      stack.wait_for_saves()
      results = {s: train.final_results(r, compile_time) for s, r in zip(configs, runs)}
    finally:
      for r in runs:
        r.close()
  for s, r in results.items():
    train.write_results(dirs[s], r)
  return results, {"seed": int(mesh.shape["seed"]), "data": int(mesh.shape["data"])}


def train_seeds(config: ml_collections.ConfigDict, workdir: "str | workdirs.Workdir") -> dict:
  """Trains every seed of `config.sweep.seeds` not yet finished, then writes
  `<workdir>/sweep.json`; returns its contents."""
  workdir = workdirs.Workdir.of(workdir)
  seeds = seedlib.parse_seeds(config.sweep.seeds)
  configs = {s: seedlib.seed_config(config, s) for s in seeds}
  placement = placement_for(config, jax.default_backend())
  results = {s: finished(workdir.seed(s), c) for s, c in configs.items()}
  todo = {s: c for s, c in configs.items() if results[s] is None}
  logging.info("sweep of seeds %s (%s): %d to train, %d finished", seeds, placement, len(todo),
               len(seeds) - len(todo))
  mesh = None
  if placement == "sequential":
    for s, c in todo.items():
      results[s] = train.train_and_evaluate(c, workdir.seed(s))
  elif todo:
    trained, mesh = train_stacked(todo, workdir, config.sweep.seed_devices)
    results.update(trained)
  summary = sweep_summary(config, seeds, results, placement, mesh)
  if jax.process_index() == 0:
    workdir.sweep.write_text(json.dumps(summary, indent=2, default=str) + "\n")
  acc = summary["test_accuracy"]
  logging.info("sweep of %d seeds: test accuracy %.4f%s", acc["n"], acc["mean"],
               f" ± {acc['std']:.4f} (95% CI {acc['interval'][0]:.4f}-{acc['interval'][1]:.4f})"
               if acc["std"] is not None else " (one seed: no spread)")
  return summary


def sweep_summary(config: ml_collections.ConfigDict, seeds: list[int], results: dict[int, dict],
                  placement: str, mesh: dict | None) -> dict:
  """sweep.json: each seed's headline numbers and their statistics."""
  per_seed = {str(s): {"workdir": f"seed_{s}", **{k: results[s].get(k) for k in (
      "test_accuracy", "last_test_accuracy", "best_epoch", "train_time_s", "images_per_s")}}
              for s in seeds}
  return {
      "seeds": seeds, "placement": placement, "mesh": mesh,
      "test_accuracy": seedlib.summary([results[s]["test_accuracy"] for s in seeds]),
      "last_test_accuracy": seedlib.summary([results[s]["last_test_accuracy"] for s in seeds]),
      "runs": per_seed, "model": config.model, "dataset": config.data.name,
      "protocol": config.protocol, "epochs": results[seeds[0]]["epochs"],
      "num_params": results[seeds[0]]["num_params"], "config": config.to_dict(),
  }
