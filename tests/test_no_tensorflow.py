"""Training, resuming, evaluating and the report on an image without
TensorFlow: `tensorflow` and `tensorflow_datasets` are made unimportable for
the subprocess (a package of each name that raises ImportError), as on a JAX
GPU image, and the data comes from the original archives."""
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--config=configs/tiny_mnist.py", "--config.data.on_device=True",
        "--config.data.train_split=train[:1024]", "--config.data.test_split=test[:2000]",
        "--config.log.every_steps=4"]


@pytest.fixture
def no_tf_env(tmp_path, data_env):
  blocked = tmp_path / "blocked"
  for name in ("tensorflow", "tensorflow_datasets"):
    (blocked / name).mkdir(parents=True)
    (blocked / name / "__init__.py").write_text(
        f"raise ImportError('{name} is not installed on this image (test)')\n")
  return {**data_env, "PYTHONPATH": str(blocked)}


def _main(args, env, **kwargs):
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env, text=True,
                        capture_output=True, timeout=600, **kwargs)


def test_the_imports_really_fail(no_tf_env):
  for name in ("tensorflow", "tensorflow_datasets"):
    probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=no_tf_env,
                           capture_output=True, text=True)
    assert probe.returncode == 1 and "ImportError" in probe.stderr


def _interrupted_run(args, env) -> subprocess.CompletedProcess:
  """Starts training and sends SIGTERM once step 8 is logged."""
  proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  log = []
  for line in proc.stderr:
    log.append(line)
    if "step 8/" in line:
      proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=300)
  return subprocess.CompletedProcess(args, proc.returncode, "", "".join(log))


def test_train_resume_evaluate_and_report_without_tensorflow(tmp_path, no_tf_env, data_env):
  workdir = tmp_path / "no_tf"
  first = _interrupted_run([*FAST, f"--workdir={workdir}"], no_tf_env)
  assert first.returncode == 0, first.stderr[-3000:]
  stopped = re.search(r"stopped by SIGTERM at step (\d+)", first.stderr)
  assert stopped and 8 <= int(stopped.group(1)) < 32, first.stderr[-3000:]  # of 32 steps
  assert "TensorBoard events skipped (no tensorflow)" in first.stderr
  assert not (workdir / "results.json").exists()
  second = _main([*FAST, f"--workdir={workdir}"], no_tf_env)
  assert second.returncode == 0, second.stderr[-3000:]
  assert f"at step {stopped.group(1)} (epoch" in second.stderr
  report = _main([*FAST, f"--workdir={workdir}", "--mode=evaluate"], no_tf_env)
  assert report.returncode == 0, report.stderr[-3000:]
  assert (workdir / "report" / "index.html").exists()
  # The same run through tfds (TensorFlow importable), uninterrupted: the same numbers.
  reference = tmp_path / "tfds"
  with_tf = _main([*FAST, f"--workdir={reference}", "--config.data.source=tfds"], data_env)
  assert with_tf.returncode == 0, with_tf.stderr[-3000:]
  assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
  ours, theirs = (json.loads((w / "results.json").read_text()) for w in (workdir, reference))
  for key in ("test_accuracy", "test_loss", "last_test_accuracy", "train_loss", "steps"):
    assert ours[key] == theirs[key], key


@pytest.mark.parametrize("flag,fix", [("--config.data.on_device=False",
                                       "--config.data.on_device=True"),
                                      ("--config.data.source=tfds",
                                       "--config.data.source=archives")])
def test_what_needs_tensorflow_says_so_in_one_line(tmp_path, no_tf_env, flag, fix):
  result = _main([*FAST, flag, f"--workdir={tmp_path / 'w'}"], no_tf_env)
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and fix in errors[0], result.stderr[-2000:]
