"""docs/errors.md promises one line, `error: ...`, for each mistake a user can
fix. Every row of that table names the test that makes the mistake as a user
would and checks the line (those that fail before training starts check that
it is the only line on stderr: `conftest.only_error_line`); a row without a
test, or a test that is gone, fails here."""
import re

from conftest import REPO, only_error_line, run_main

TESTS = REPO / "tests"
ROWS = {
    "config file missing or misspelt":
        "test_config_validation.py::test_command_line_mistakes_are_one_line_with_exit_2",
    "config file broken":
        "test_config_validation.py::test_broken_config_files_are_one_line_with_exit_2",
    "unknown config key":
        "test_main.py::test_bad_config_is_one_clear_line",
    "wrong type":
        "test_main.py::test_bad_config_is_one_clear_line",
    "value out of range":
        "test_config_validation.py::test_command_line_mistakes_are_one_line_with_exit_2",
    "unknown name":
        "test_main.py::test_bad_config_is_one_clear_line",
    "a flat key of an older config":
        "test_config_validation.py::test_a_config_file_with_a_flat_key_names_its_new_place",
    "batch size not divisible by the devices":
        "test_data_parallel.py::test_batch_size_not_divisible_by_devices_is_one_line",
    "workdir in use": ("test_workdir_lock.py::test_second_trainer_and_evaluation_refuse_and_a_"
                       "killed_trainer_does_not_block"),
    "workdir of another model, not writable":
        "test_main.py::test_checkpoint_of_another_model_is_refused",
    "offline data missing or corrupt":
        "test_errors.py::test_a_dataset_not_on_disk_offline_is_the_only_line",
    "diverged loss, split too big for `data.on_device`":
        "test_resume.py::test_divergence_stops_and_keeps_the_last_good_checkpoint",
    "workdir's disk full":
        "test_disk_full.py::test_a_full_disk_is_one_line_and_keeps_the_checkpoint",
    "every checkpoint damaged":
        "test_damaged_checkpoint.py::test_no_readable_checkpoint_is_one_line",
    "a damaged checkpoint read by predict or evaluate":
        "test_damaged_checkpoint.py::test_readers_name_a_damaged_checkpoint_in_one_line",
    "predict: a bad input file":
        "test_predict.py::test_bad_files_get_one_line_each_and_the_rest_are_classified",
    "predict/export: no checkpoint, wrong flags":
        "test_predict.py::test_mistakes_are_one_line_and_nothing_is_written",
    "weights file damaged or replaced":
        "test_weights.py::test_record_ships_weights_that_predict_like_the_workdir",
    "speedrun: a bad argument":
        "test_speedrun_recipe.py::"
        "test_the_command_refuses_bad_arguments_in_one_line_before_loading_data",
}


def table_rows() -> list[str]:
  """The first column of docs/errors.md's table (the one that starts `| mistake`)."""
  text = (REPO / "docs" / "errors.md").read_text()
  table = text[text.index("\n| mistake |") + 1:].split("\n\n")[0]
  return [re.split(r"\s*\|\s*", line)[1] for line in table.splitlines()[2:]]


def test_every_row_of_the_errors_table_names_a_test_that_exists():
  assert table_rows() == list(ROWS)
  for row, test in ROWS.items():
    module, function = test.split("::")
    assert f"def {function}(" in (TESTS / module).read_text(), (row, test)


def test_a_dataset_not_on_disk_offline_is_the_only_line(data_env, tmp_path):
  """tfds's warning about the empty folder a failed preparation leaves, and
  TensorFlow's start-up banner, are not shown before the line (tried twice:
  the second run meets that folder)."""
  env = {**data_env, "TFDS_DATA_DIR": str(tmp_path / "tfds")}
  for _ in range(2):
    result = run_main(env, "--config=configs/tiny_mnist.py", "--config.data.name=cifar100",
                      f"--workdir={tmp_path / 'w'}", check=False)
    assert only_error_line(result).startswith(
        "error: no offline archives for 'cifar100' in ")
