"""Seed sweeps (cnn/seeds.py, cnn/sweep.py): N seeds as one job, each exactly
the run that seed would be alone; their statistics against scipy's.

On one CPU device with oneDNN's convolutions a vmapped seed is bitwise that
seed alone (vmap calls the custom call once per seed). XLA's own vmapped
convolution (several devices, or no oneDNN) sums in another order, so there
the seeds agree with their runs alone within 1e-5, as data parallelism does
(tests/test_data_parallel.py).
"""
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from cnn import seeds, settings
from cnn.errors import UserError
from conftest import REPO, only_error_line, run_main
from test_cluster import start_processes, wait_all, with_devices
from test_resume import assert_bitwise_equal, checkpoint_steps, final_params, paper_tiny  # noqa: F401 (a fixture)

pytestmark = pytest.mark.xdist_group("sweep")  # the module's sweep is trained once

SMALL = ["--config=configs/tiny_mnist.py", "--config.data.train_split=train[:384]",
         "--config.eval.batch_size=1000", "--config.log.every_steps=2"]
VMAP = ["--config.sweep.placement=vmap"]


def onednn_loaded() -> bool:
  try:
    import cnn_onednn  # pylint: disable=import-outside-toplevel
    cnn_onednn.load()
  except (ImportError, OSError, AttributeError):
    return False
  return True


def losses(workdir) -> list[float]:
  return [json.loads(line)["loss"] for line in (workdir / "steps.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sweep_run(data_env, mnist, tmp_path_factory):
  """Seeds 0 and 1 of the small run, vmapped on one device: (workdir, stderr)."""
  workdir = tmp_path_factory.mktemp("sweep") / "w"
  result = run_main(data_env, *SMALL, *VMAP, f"--workdir={workdir}", "--config.sweep.seeds=0-1")
  return workdir, result.stderr


def test_seed_lists_parse_and_mistakes_are_refused():
  assert seeds.parse_seeds("0-2,7") == [0, 1, 2, 7]
  assert seeds.parse_seeds(" 4 ") == [4]
  for wrong in ("2-1", "a", "1,1", "0-2,2", "-1", ""):
    with pytest.raises(UserError, match="config.sweep.seeds"):
      seeds.parse_seeds(wrong)


def test_summary_is_scipys_t_interval():
  values = [0.9131, 0.9152, 0.9118, 0.9160, 0.9127]
  s = seeds.summary(values)
  assert (s["n"], s["min"], s["max"]) == (5, 0.9118, 0.916)
  assert s["mean"] == pytest.approx(np.mean(values), abs=1e-15)
  assert s["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-15)
  expected = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
  np.testing.assert_allclose(s["interval"], expected, rtol=0, atol=1e-12)
  one = seeds.summary([0.9])
  assert (one["mean"], one["std"], one["interval"]) == (0.9, None, None)


def test_welch_is_scipys_and_says_when_it_cannot_tell():
  a, b = [0.9131, 0.9152, 0.9118, 0.9160], [0.9170, 0.9188, 0.9201]
  ours, theirs = seeds.welch(a, b), stats.ttest_ind(a, b, equal_var=False)
  assert ours["t"] == pytest.approx(theirs.statistic, rel=1e-12)
  assert ours["p"] == pytest.approx(theirs.pvalue, rel=1e-9)
  assert ours["dof"] == pytest.approx(theirs.df, rel=1e-12)
  assert "at least 2 seeds on each side (have 1 and 3)" in seeds.welch([0.9], b)["reason"]
  assert seeds.welch([0.9, 0.9], [0.9, 0.9])["p"] is None


def test_a_seeds_config_is_its_run_alone():
  config = settings.default_config()
  config.sweep.seeds, config.sweep.placement, config.learning_rate = "0-4", "vmap", 0.2
  one = seeds.seed_config(config, 3)
  alone = settings.default_config()
  alone.seed, alone.learning_rate = 3, 0.2
  assert one.to_dict() == alone.to_dict()
  assert config.seed == 0 and config.sweep.seeds == "0-4"  # the sweep's config is untouched


def test_seeds_ahead_are_moved_aside_only_where_the_common_step_is_kept(tmp_path):
  from cnn import sweep, workdir  # pylint: disable=import-outside-toplevel (JAX)
  root = workdir.Workdir(str(tmp_path / "w"))
  for seed, steps in ((0, (4, 6)), (1, (4,)), (2, (2, 4))):
    for step in steps:
      (tmp_path / "w" / f"seed_{seed}" / "checkpoints" / str(step)).mkdir(parents=True)
  dirs = {s: root.seed(s) for s in (0, 1, 2)}
  assert sweep.seeds_ahead(dirs) == 4
  assert sorted(p.name for p in (tmp_path / "w" / "seed_0" / "checkpoints").iterdir()) == ["4"]
  assert (tmp_path / "w" / "seed_0" / "damaged_checkpoints" / "6").is_dir()
  (tmp_path / "w" / "seed_3" / "checkpoints" / "8").mkdir(parents=True)
  with pytest.raises(UserError, match="seed 3 is at step 8 but seed 4 at step 0, and a vmapped "
                     "sweep trains its seeds in step; finish them with "
                     "--config.sweep.placement=sequential"):
    sweep.seeds_ahead({3: root.seed(3), 4: root.seed(4)})  # seed 4 has no checkpoint
  assert (tmp_path / "w" / "seed_3" / "checkpoints" / "8").is_dir()  # nothing moved


def test_a_wrong_seed_list_is_one_line(data_env, tmp_path):
  result = run_main(data_env, "--config=configs/tiny_mnist.py", f"--workdir={tmp_path / 'w'}",
                    "--config.sweep.seeds=3-1", check=False)
  assert only_error_line(result) == (
      "error: config.sweep.seeds='3-1' must be a list of distinct seeds >= 0 ('0-4', '0,3,7', "
      "'0-2,9'), e.g. --config.sweep.seeds=0-4")
  assert not (tmp_path / "w").exists()


def test_a_vmapped_seed_is_that_seed_trained_alone(sweep_run, data_env, tmp_path):
  sweep, stderr = sweep_run
  assert "vmapped on a {'seed': 1, 'data': 1} mesh" in stderr
  alone = tmp_path / "alone"
  run_main(data_env, *SMALL, f"--workdir={alone}", "--config.seed=1")
  ours, theirs = (json.loads((w / "results.json").read_text()) for w in (sweep / "seed_1", alone))
  assert ours["config"] == theirs["config"]  # the seed's workdir is that run's
  if onednn_loaded():  # bitwise: every number the run writes
    for name in ("metrics.jsonl", "steps.jsonl"):
      assert (sweep / "seed_1" / name).read_text() == (alone / name).read_text(), name
    assert_bitwise_equal(final_params(sweep / "seed_1"), final_params(alone))
    assert ours["test_accuracy"] == theirs["test_accuracy"]
  else:
    np.testing.assert_allclose(losses(sweep / "seed_1"), losses(alone), rtol=0, atol=1e-5)
  zero = json.loads((sweep / "seed_0" / "results.json").read_text())
  assert zero["config"]["seed"] == 0 and zero["test_accuracy"] != ours["test_accuracy"]


def test_sweep_json_summarises_the_seeds_and_a_rerun_trains_nothing(sweep_run, data_env):
  sweep, _ = sweep_run
  summary = json.loads((sweep / "sweep.json").read_text())
  accuracies = [json.loads((sweep / f"seed_{s}" / "results.json").read_text())["test_accuracy"]
                for s in (0, 1)]
  assert (summary["seeds"], summary["placement"], summary["mesh"]) == ([0, 1], "vmap",
                                                                       {"seed": 1, "data": 1})
  acc = summary["test_accuracy"]
  assert acc["n"] == 2 and acc["mean"] == pytest.approx(np.mean(accuracies), abs=1e-15)
  np.testing.assert_allclose(acc["interval"], stats.t.interval(
      0.95, 1, loc=np.mean(accuracies), scale=stats.sem(accuracies)), atol=1e-12)
  assert summary["runs"]["1"]["test_accuracy"] == accuracies[1]
  before = {p: p.read_bytes() for p in sweep.rglob("*.jsonl")}
  again = run_main(data_env, *SMALL, *VMAP, f"--workdir={sweep}", "--config.sweep.seeds=0-1")
  assert "2 to train" not in again.stderr and "0 to train, 2 finished" in again.stderr
  assert {p: p.read_bytes() for p in sweep.rglob("*.jsonl")} == before
  assert json.loads((sweep / "sweep.json").read_text())["test_accuracy"] == acc


@pytest.mark.slow
def test_the_sequential_placement_trains_the_same_seeds_and_evaluate_reports_each(
    sweep_run, data_env, tmp_path):
  reference, _ = sweep_run
  workdir = tmp_path / "w"
  args = [*SMALL, f"--workdir={workdir}", "--config.sweep.seeds=0-1"]
  result = run_main(data_env, *args, "--config.sweep.placement=sequential")
  assert "sweep of seeds [0, 1] (sequential): 2 to train" in result.stderr
  summary = json.loads((workdir / "sweep.json").read_text())
  assert summary["placement"] == "sequential" and summary["mesh"] is None
  for s in (0, 1):
    if onednn_loaded():
      assert ((workdir / f"seed_{s}" / "steps.jsonl").read_text()
              == (reference / f"seed_{s}" / "steps.jsonl").read_text())
    else:
      np.testing.assert_allclose(losses(workdir / f"seed_{s}"), losses(reference / f"seed_{s}"),
                                 rtol=0, atol=1e-5)
  run_main(data_env, *args, "--mode=evaluate")
  for s in (0, 1):
    report = json.loads((workdir / f"seed_{s}" / "report" / "classification_report.json")
                        .read_text())
    results = json.loads((workdir / f"seed_{s}" / "results.json").read_text())
    assert report["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_four_seeds_on_two_devices_equal_four_separate_runs(data_env, mnist, tmp_path):
  """(seed 2, data 1): each seed on its own device; (seed 1, data 2): all four
  vmapped, each data-parallel like its run alone on the two devices."""
  env = {**data_env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  small = [*SMALL, "--config.num_epochs=1", "--config.learning_rate=0.001"]
  for s in range(4):
    run_main(env, *small, f"--workdir={tmp_path / 'alone' / f'seed_{s}'}", f"--config.seed={s}")
  for seed_devices, mesh in ((2, "{'seed': 2, 'data': 1}"), (1, "{'seed': 1, 'data': 2}")):
    sweep = tmp_path / f"sweep{seed_devices}"
    result = run_main(env, *small, *VMAP, f"--workdir={sweep}", "--config.sweep.seeds=0-3",
                      f"--config.sweep.seed_devices={seed_devices}")
    assert f"vmapped on a {mesh} mesh" in result.stderr
    for s in range(4):
      alone = tmp_path / "alone" / f"seed_{s}"
      np.testing.assert_allclose(losses(sweep / f"seed_{s}"), losses(alone), rtol=0, atol=1e-5)
      ours, theirs = (json.loads((w / "metrics.jsonl").read_text().splitlines()[-1])
                      for w in (sweep / f"seed_{s}", alone))
      assert ours["val_accuracy"] == theirs["val_accuracy"]
      np.testing.assert_allclose(ours["val_loss"], theirs["val_loss"], atol=1e-5)


@pytest.mark.slow
def test_a_sweep_stopped_and_resumed_ends_bitwise_equal(sweep_run, data_env, tmp_path):
  """SIGTERM mid-sweep, then one seed's newest checkpoint removed (as if its
  save had not finished when the machine died): the other seed's newer step
  is moved aside, both resume from the same step, and every number is that of
  the uninterrupted sweep."""
  reference, _ = sweep_run
  workdir = tmp_path / "w"
  args = [*SMALL, *VMAP, f"--workdir={workdir}", "--config.sweep.seeds=0-1",
          "--config.checkpoint.every_steps=2"]
  proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=REPO, env=data_env,
                          stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:
    if "epoch 2/2 step 2/6" in line:
      proc.send_signal(signal.SIGTERM)
      break
  assert "preempted" in proc.communicate(timeout=300)[1] and proc.returncode == 0
  steps = lambda s: sorted(int(p.name) for p in (workdir / f"seed_{s}" / "checkpoints").iterdir()
                           if p.name.isdigit())
  newest = steps(0)[-1]
  assert steps(1)[-1] == newest and newest > 6
  shutil.rmtree(workdir / "seed_1" / "checkpoints" / str(newest))
  resumed = run_main(data_env, *args)
  assert f"seed 0: checkpoint step {newest} is ahead" in resumed.stderr
  assert (workdir / "seed_0" / "damaged_checkpoints" / str(newest)).is_dir()
  for s in (0, 1):
    ours, theirs = workdir / f"seed_{s}", reference / f"seed_{s}"
    for name in ("metrics.jsonl", "steps.jsonl"):
      assert (ours / name).read_text() == (theirs / name).read_text(), (s, name)
    assert_bitwise_equal(final_params(ours), final_params(theirs))


def test_a_vmapped_sweep_saving_only_at_the_end_trains_the_same_numbers(paper_tiny, tmp_path):
  """checkpoint.every_epochs=0 in the stacked loop (SeedStack.end_epoch): each
  seed saves its last step only, and every number is the sweep's that saved
  each epoch."""
  from cnn import sweep  # pylint: disable=import-outside-toplevel (JAX)
  for every, name in ((1, "each"), (0, "once")):
    config = paper_tiny(**{"sweep.seeds": "0-1", "sweep.placement": "vmap", "num_epochs": 2,
                           "data.train_split": "train[:128]", "log.every_steps": 1,
                           "checkpoint.every_epochs": every})  # 2 epochs of 2 steps
    sweep.train_seeds(config, str(tmp_path / name))
  for s in (0, 1):
    ours, theirs = tmp_path / "once" / f"seed_{s}", tmp_path / "each" / f"seed_{s}"
    assert checkpoint_steps(ours) == [4] and checkpoint_steps(theirs) == [2, 4]
    for name in ("metrics.jsonl", "steps.jsonl"):
      assert (ours / name).read_text() == (theirs / name).read_text(), (s, name)
    assert_bitwise_equal(final_params(ours), final_params(theirs))
    assert (json.loads((ours / "results.json").read_text())["test_accuracy"]
            == json.loads((theirs / "results.json").read_text())["test_accuracy"])


@pytest.mark.cluster
def test_two_processes_train_a_sweep_like_one_process(data_env, mnist, tmp_path):
  """4 seeds on a (seed 2, data 2) mesh: each process holds two seeds' states,
  each seed data-parallel over one process's two devices; the same numbers as
  one process with the four devices."""
  args = [*SMALL, "--config.num_epochs=1", "--config.learning_rate=0.001", *VMAP,
          "--config.sweep.seeds=0-3", "--config.sweep.seed_devices=2"]
  single, multi = tmp_path / "single", tmp_path / "multi"
  run_main(with_devices(data_env, 4), *args, f"--workdir={single}")
  procs = start_processes(data_env, 2, 2, multi, *args)
  errors = wait_all(procs, 600)
  assert [p.returncode for p in procs] == [0, 0], errors[0][-3000:]
  assert "vmapped on a {'seed': 2, 'data': 2} mesh" in errors[0]
  for s in range(4):
    np.testing.assert_allclose(losses(multi / f"seed_{s}"), losses(single / f"seed_{s}"),
                               rtol=0, atol=1e-5)
    ours, theirs = (json.loads((w / f"seed_{s}" / "results.json").read_text())
                    for w in (multi, single))
    assert ours["test_accuracy"] == theirs["test_accuracy"] and ours["devices"] == 4
  summary = json.loads((multi / "sweep.json").read_text())
  assert summary["mesh"] == {"seed": 2, "data": 2} and summary["test_accuracy"]["n"] == 4
