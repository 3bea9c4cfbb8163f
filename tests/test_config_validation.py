"""Every setting is checked at startup by the rule declared with it (cnn/settings.py
says where each section lives): wrong types and out-of-range values are one
`error:` line with the fix, and so are broken config files and the flat keys
of older configs."""
import ml_collections
import pytest

from cnn import settings
from cnn.config_validation import validate_config
from cnn.errors import UserError
from conftest import only_error_line, run_main
from configs import default

SETTINGS = {(f"{s.name}." if s.name else "") + key: setting
            for s in (settings.TOP, *settings.sections()) for key, setting in s.settings.items()}
WRONG_TYPE = {int: "x", float: "x", bool: "yes", str: 3, tuple: 0.5,
              ml_collections.ConfigDict: "x"}
OUT_OF_RANGE_CANDIDATES = (-1, -0.5, 0, 1, 1.5, 2, "", (0.9, 0.2), (0.5, 1.5), (-2, 8),
                           "no_such_name")


def with_value(path, value) -> ml_collections.ConfigDict:
  """The default config with `path` set to `value`, whatever its type (as a
  config file that builds its own ConfigDict could)."""
  values = default.get_config().to_dict()
  section, _, key = path.rpartition(".")
  (values[section] if section else values)[key] = value
  return ml_collections.ConfigDict(values)


def assert_one_line_error(path, value):
  with pytest.raises(UserError) as e:
    validate_config(with_value(path, value))
  message = str(e.value)
  assert "\n" not in message
  assert f"config.{path}=" in message or f"unknown config.{path} " in message, message
  assert "--config." in message or "valid" in message, message  # names the fix


def paths(config: ml_collections.ConfigDict) -> list[str]:
  return sorted(f"{k}.{sub}" if isinstance(v, ml_collections.ConfigDict) and k != "model_kwargs"
                else k for k, v in config.items()
                for sub in (v.keys() if isinstance(v, ml_collections.ConfigDict)
                            and k != "model_kwargs" else [None]))


def test_every_setting_has_a_meaning_and_its_default_passes_its_rule():
  config = default.get_config()
  assert paths(config) == sorted(SETTINGS)
  for path, setting in SETTINGS.items():
    assert setting.doc, path
    section, _, key = path.rpartition(".")
    setting.check(path, (config[section] if section else config)[key])
  validate_config(config)


def test_sections_have_distinct_names_and_their_renames_point_at_their_settings():
  names = [s.name for s in settings.sections()]
  assert len(names) == len(set(names)) and "" not in names
  assert not set(names) & set(settings.TOP.settings)
  for section in settings.sections():
    assert set(section.renamed.values()) <= set(section.settings), section.name
  olds = [old for s in settings.sections() for old in s.renamed]
  assert len(olds) == len(set(olds))


@pytest.mark.parametrize("path", sorted(SETTINGS))
def test_wrong_type_is_one_line(path):
  assert_one_line_error(path, WRONG_TYPE[type(SETTINGS[path].default)])


@pytest.mark.parametrize("path", sorted(SETTINGS))
def test_out_of_range_is_one_line(path):
  setting = SETTINGS[path]
  if setting.choices is None and not setting.expect:
    pytest.skip(f"{path} takes any {type(setting.default).__name__}")  # free text, switches
  bad = [v for v in OUT_OF_RANGE_CANDIDATES if _breaks(path, v)]
  assert bad, f"no candidate value breaks the rule of {path}"
  assert_one_line_error(path, bad[0])


def _breaks(path, value) -> bool:
  """`value` has the setting's type but breaks its range or choices."""
  setting = SETTINGS[path]
  kinds = setting.kinds()
  if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
    return False
  try:
    setting.check(path, value)
  except UserError:
    return True
  return False


def test_a_boundary_list_out_of_order_is_refused():
  with pytest.raises(UserError, match=r"boundaries=\(0.9, 0.2\) must be increasing"):
    validate_config(with_value("schedule.boundaries", (0.9, 0.2)))


@pytest.mark.parametrize("key", sorted(settings.renames()))
def test_a_flat_key_of_an_older_config_names_its_new_place(key):
  values = default.get_config().to_dict()
  old, _, sub = key.partition(".")
  if sub:  # one that lived in model_kwargs
    values[old][sub] = "x"
  else:
    values[key] = "x"
  with pytest.raises(UserError) as e:
    validate_config(ml_collections.ConfigDict(values))
  assert str(e.value).startswith(f"config.{key} is now config.{settings.renames()[key]}:")


@pytest.mark.parametrize("args,message", [
    (["--config=configs/no_such_config.py"], "error: config file configs/no_such_config.py not "
     "found; the configs are in configs/"),
    (["--config=configs/resnet20v1_cifar.py"], "error: config file configs/resnet20v1_cifar.py "
     "not found; did you mean configs/resnet20v1_cifar10.py"),
    (["--config=configs/tiny_mnist.py", "--config.layers.dtype=float8"
     ], "error: unknown config.layers.dtype 'float8'; valid: bfloat16, float16, float32"),
    (["--config=configs/tiny_mnist.py", "--config.momentum=0.5"
     ], "error: config.momentum is now config.optim.momentum: use --config.optim.momentum=..."),
    (["--config=configs/tiny_mnist.py", "--config.model_kwargs.conv_algorithm=xla"
     ], "error: config.model_kwargs.conv_algorithm is now config.layers.conv_algorithm: use "
     "--config.layers.conv_algorithm=..."),
    (["--config=configs/tiny_mnist.py", "--config.augment.crop_padding=-3"
     ], "error: config.augment.crop_padding=-3 must be >= 0, e.g. --config.augment.crop_padding=4"),
    (["--config=configs/tiny_mnist.py", "--config.schedule.boundaries=(0.9,0.2)"],
     "error: config.schedule.boundaries=(0.9, 0.2) must be increasing fractions of the run in (0, 1)"
    ),
    (["--config=configs/tiny_mnist.py", "--config.batch_size=abc"
     ], "error: flag --config.batch_size=abc: invalid literal for int()"),
    (["--config=configs/resnet20v1_cifar10.py:papr"
     ], "error: config file configs/resnet20v1_cifar10.py could not be loaded (ValueError: unknown "
     "protocol 'papr'; valid: paper, validation"),
])
def test_command_line_mistakes_are_one_line_with_exit_2(data_env, tmp_path, args, message):
  result = run_main(data_env, *args, f"--workdir={tmp_path / 'w'}", check=False)
  assert only_error_line(result).startswith(message)
  assert not (tmp_path / "w").exists()  # nothing written


@pytest.mark.parametrize("body,message", [
    ("x = 1\n", "has no get_config(); define get_config() returning a ConfigDict"),
    ("def get_config(:\n", "has a syntax error at line 1: invalid syntax; fix the file"),
    ("from configs import default\ndef get_config():\n  c = default.get_config()\n"
     "  c.num_epochs = 'ten'\n  return c\n", "could not be loaded (TypeError: Could not override "
                                            "field 'num_epochs'"),
    ("def get_config():\n  raise RuntimeError('boom')\n",
     "could not be loaded (RuntimeError: boom)"),
])
def test_broken_config_files_are_one_line_with_exit_2(data_env, tmp_path, body, message):
  path = tmp_path / "my_config.py"
  path.write_text(body)
  result = run_main(data_env, f"--config={path}", f"--workdir={tmp_path / 'w'}", check=False)
  assert only_error_line(result).startswith(f"error: config file {path} {message}")


def test_a_config_file_with_a_flat_key_names_its_new_place(data_env, tmp_path):
  path = tmp_path / "old_style.py"
  path.write_text("from configs import default\ndef get_config():\n  c = default.get_config()\n"
                  "  c.weight_decay = 5e-4\n  return c\n")
  result = run_main(data_env, f"--config={path}", f"--workdir={tmp_path / 'w'}", check=False)
  assert only_error_line(result).startswith(
      "error: config.weight_decay is now config.optim.weight_decay:")
  assert not (tmp_path / "w").exists()
