"""Every config field is checked at startup from one table (cnn/config_validation.RULES):
wrong types and out-of-range values are one `error:` line with the fix, and so
are broken config files."""
import ml_collections
import pytest

from cnn import config_validation
from cnn.config_validation import RULES, validate_config
from cnn.errors import UserError
from conftest import only_error_line, run_main
from configs import default

FIELDS = sorted(default.get_config().keys())
WRONG_TYPE = {int: "x", bool: "yes", str: 3, tuple: 0.5, ml_collections.ConfigDict: "x"}
OUT_OF_RANGE_CANDIDATES = (-1, -0.5, 0, 1, 1.5, 2, "", (0.9, 0.2), (0.5, 1.5), (-2, 8),
                           "no_such_name")


def with_value(key, value) -> ml_collections.ConfigDict:
  """The default config with `key` set to `value`, whatever its type (as a
  config file that builds its own ConfigDict could)."""
  values = default.get_config().to_dict()
  values[key] = value
  return ml_collections.ConfigDict(values)


def assert_one_line_error(key, value):
  with pytest.raises(UserError) as e:
    validate_config(with_value(key, value))
  message = str(e.value)
  assert "\n" not in message
  assert f"config.{key}=" in message or f"unknown {key} " in message, message
  assert "--config." in message or "valid" in message, message  # names the fix


def test_every_field_of_the_defaults_has_a_rule_and_every_rule_a_field():
  assert sorted(RULES) == FIELDS
  for key in FIELDS:
    config_validation.check_field(key, default.get_config()[key])  # the defaults pass


@pytest.mark.parametrize("key", FIELDS)
def test_wrong_type_is_one_line(key):
  kind = RULES[key].kind
  first = kind[0] if isinstance(kind, tuple) else kind
  wrong = WRONG_TYPE[bool if first is bool else first]
  assert_one_line_error(key, wrong)


@pytest.mark.parametrize("key", FIELDS)
def test_out_of_range_is_one_line(key):
  rule = RULES[key]
  if rule.choices is None and not rule.expect:
    pytest.skip(f"{key} takes any {rule.kind}")  # free text: paths and optional splits
  bad = [v for v in OUT_OF_RANGE_CANDIDATES if _breaks(key, v)]
  assert bad, f"no candidate value breaks the rule of {key}"
  assert_one_line_error(key, bad[0])


def _breaks(key, value) -> bool:
  """`value` has the field's type but breaks its range or choices."""
  kind = RULES[key].kind
  if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
    return False
  try:
    config_validation.check_field(key, value)
  except UserError:
    return True
  return False


def test_a_boundary_list_out_of_order_is_refused():
  with pytest.raises(UserError, match=r"lr_boundaries=\(0.9, 0.2\) must be increasing"):
    validate_config(with_value("lr_boundaries", (0.9, 0.2)))


@pytest.mark.parametrize("args,message", [
    (["--config=configs/no_such_config.py"], "error: config file configs/no_such_config.py not "
                                              "found; the configs are in configs/"),
    (["--config=configs/resnet20v1_cifar.py"], "error: config file configs/resnet20v1_cifar.py "
                                                "not found; did you mean configs/resnet20v1_cifar10.py"),
    (["--config=configs/tiny_mnist.py", "--config.dtype=float8"],
     "error: unknown dtype 'float8'; valid dtypes: bfloat16, float16, float32"),
    (["--config=configs/tiny_mnist.py", "--config.crop_padding=-3"],
     "error: config.crop_padding=-3 must be >= 0, e.g. --config.crop_padding=4"),
    (["--config=configs/tiny_mnist.py", "--config.lr_boundaries=(0.9,0.2)"],
     "error: config.lr_boundaries=(0.9, 0.2) must be increasing fractions of the run in (0, 1)"),
    (["--config=configs/tiny_mnist.py", "--config.batch_size=abc"],
     "error: flag --config.batch_size=abc: invalid literal for int()"),
    (["--config=configs/resnet20v1_cifar10.py:papr"],
     "error: config file configs/resnet20v1_cifar10.py could not be loaded (ValueError: unknown "
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
