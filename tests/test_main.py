"""main.py end to end on real data, as a user runs it, and its error lines."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import only_error_line, run_main


def test_tiny_config_trains_and_writes_results(tiny_run):
  workdir, first = tiny_run
  results = json.loads((workdir / "results.json").read_text())
  assert results["test_count"] == 10_000  # every test image, once
  assert results["test_accuracy"] > 0.6  # chance is 0.1
  assert results["epochs"] == 2 and results["num_params"] == 77_754
  for key in ("test_loss", "best_val_accuracy", "train_accuracy", "batch_size", "wall_time_s",
              "images_per_s", "seed", "config"):
    assert results[key] is not None, key
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in history] == [1, 2]
  assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy",
          "learning_rate"} <= set(history[0])
  assert history[1]["train_loss"] < history[0]["train_loss"]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert "img/s" in first.stderr and "ETA" in first.stderr


def test_steps_jsonl_holds_every_batch_loss_in_windows_of_log_every_steps(tiny_run):
  """32 steps per epoch, a line every 8: the windows' means average to the
  epoch's training loss, and each window's min <= mean <= max."""
  workdir, _ = tiny_run
  steps = [json.loads(line) for line in (workdir / "steps.jsonl").read_text().splitlines()]
  history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in steps] == list(range(8, 65, 8))
  assert all(r["steps"] == 8 and r["loss_min"] <= r["loss"] <= r["loss_max"] for r in steps)
  for epoch, record in enumerate(history):
    windows = steps[4 * epoch:4 * epoch + 4]
    assert sum(w["loss"] for w in windows) / 4 == pytest.approx(record["train_loss"], rel=1e-5)
  assert steps[-1]["learning_rate"] == history[-1]["learning_rate"]
  assert steps[0]["loss_max"] > steps[-1]["loss_max"]  # it learns


def own_copy(tiny_run, tmp_path) -> Path:
  """The shared tiny run's workdir, copied: a test that runs main.py on it
  takes its lock and rewrites it, which the other worker's tests must not see."""
  return Path(shutil.copytree(tiny_run[0], tmp_path / "tiny"))


def test_rerun_resumes_instead_of_starting_over(tiny_run, data_env, tmp_path):
  workdir = own_copy(tiny_run, tmp_path)
  before = json.loads((workdir / "results.json").read_text())
  again = run_main(data_env, "--config=configs/tiny_mnist.py", f"--workdir={workdir}")
  assert "resumed from" in again.stderr and "at step 64" in again.stderr
  assert "img/s" not in again.stderr  # no training step was run
  after = json.loads((workdir / "results.json").read_text())
  assert after["test_accuracy"] == before["test_accuracy"]


def test_checkpoint_of_another_model_is_refused(tiny_run, data_env, tmp_path):
  workdir = own_copy(tiny_run, tmp_path)
  result = run_main(data_env, "--config=configs/tiny_mnist.py", f"--workdir={workdir}",
                    "--config.model=resnet20_v1", check=False)
  assert "incompatible checkpoint (model: checkpoint has 'resnet8_v1'" in only_error_line(result)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["32", "64"]


@pytest.mark.parametrize("override,message", [
    ("--config.model=resnet21", "error: unknown config.model 'resnet21'; valid: "),
    ("--config.data.name=imagenet", "error: unknown config.data.name 'imagenet'; valid: cifar10, "),
    ("--config.learning_rat=0.1", "error: unknown config key 'learning_rat'; did you mean"),
    ("--config.num_epochs=0", "error: config.num_epochs=0 must be > 0"),
    ("--config.num_epochs=ten", "error: flag --config.num_epochs=ten: invalid literal for int()"),
    ("--config.optim.name=sgdd",
     "error: unknown config.optim.name 'sgdd'; valid: adam, adamw, lamb, lars, lion, sgd"),
    ("--config.schedule.name=triangle", "error: unknown config.schedule.name 'triangle'; valid: "),
])
def test_bad_config_is_one_clear_line(data_env, tmp_path, override, message):
  result = run_main(data_env, "--config=configs/tiny_mnist.py", f"--workdir={tmp_path}",
                    override, check=False)
  assert only_error_line(result).startswith(message)


def test_missing_offline_archives_say_which_files_to_put_where(data_env, tmp_path):
  env = {**data_env, "CNN_ARCHIVE_DIR": str(tmp_path / "archives"),
         "TFDS_DATA_DIR": str(tmp_path / "tfds")}
  (tmp_path / "archives").mkdir()
  result = run_main(env, "--config=configs/tiny_mnist.py", f"--workdir={tmp_path / 'w'}",
                    check=False)
  last = only_error_line(result)
  assert last.startswith(f"error: no offline archives for 'mnist' in {tmp_path / 'archives'}: "
                         "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                         "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in "), last


def test_unwritable_workdir_is_one_line(data_env, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  result = run_main(data_env, "--config=configs/tiny_mnist.py", f"--workdir={blocker / 'w'}",
                    check=False)
  assert only_error_line(result) == (
      f"error: workdir {blocker / 'w'} is not writable (Not a directory); choose another --workdir")


def test_corrupt_offline_archive_is_refused(data_env, archive_dir, tmp_path):
  archives = tmp_path / "archives" / "mnist"
  archives.mkdir(parents=True)
  for f in (Path(archive_dir) / "mnist").glob("*.gz"):
    data = f.read_bytes()
    if f.name == "t10k-labels-idx1-ubyte.gz":
      data = data[:-10] + bytes(10)  # damaged download
    (archives / f.name).write_bytes(data)
  env = {**data_env, "CNN_ARCHIVE_DIR": str(tmp_path / "archives"),
         "TFDS_DATA_DIR": str(tmp_path / "tfds")}
  result = run_main(env, "--config=configs/tiny_mnist.py", f"--workdir={tmp_path / 'w'}",
                    check=False)
  last = only_error_line(result)
  assert last == (f"error: corrupt archive for 'mnist': {archives / 't10k-labels-idx1-ubyte.gz'} "
                  "does not match the official checksum; replace it with the original file"), last
