"""Data parallelism gives the answer of one device: 8 fake CPU devices in one
process, and 2 processes x 2 devices joined by jax.distributed on localhost.

Differences come only from the order of floating-point reductions (about
1e-7 after one step); training amplifies them, the more the larger the
learning rate, so these comparisons train a few steps at a small one.
"""
import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import only_error_line, REPO, run_main

PROBE = str(REPO / "tests" / "data_parallel_probe.py")
SMALL = ["--config=configs/tiny_mnist.py", "--config.num_epochs=1",
         "--config.data.train_split=train[:384]", "--config.learning_rate=0.001",
         "--config.eval.batch_size=1000"]


def with_devices(env: dict, n: int) -> dict:
  return {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


def probe(env: dict, devices: int, batchnorm: str = "global", data: str = "tf_data",
          **overrides) -> dict:
  out = subprocess.run([sys.executable, PROBE, "0.001", batchnorm, data, json.dumps(overrides)],
                       env=with_devices(env, devices),
                       capture_output=True, text=True, timeout=300, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_eight_devices_train_like_one(data_env, mnist):
  one, eight = probe(data_env, 1), probe(data_env, 8)
  assert (one["devices"], eight["devices"]) == (1, 8)
  assert len(one["losses"]) == 6
  assert abs(one["losses"][0] - eight["losses"][0]) < 1e-6  # same data, init, BN statistics
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=0, atol=1e-5)
  assert eight["validation"]["count"] == one["validation"]["count"] == 1000
  assert eight["validation"]["accuracy"] == one["validation"]["accuracy"]
  np.testing.assert_allclose(eight["validation"]["loss"], one["validation"]["loss"], atol=1e-5)


@pytest.mark.cluster
def test_eight_devices_train_like_one_with_data_on_device(data_env, mnist):
  """Batches made on the devices are global too: sharding does not change them."""
  one, eight = probe(data_env, 1, data="on_device"), probe(data_env, 8, data="on_device")
  assert len(one["losses"]) == 6
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=0, atol=1e-5)
  assert eight["validation"]["accuracy"] == one["validation"]["accuracy"]


@pytest.mark.cluster
def test_eight_devices_train_like_one_with_every_augmentation(data_env, mnist):
  """RandAugment, crop and flip, Cutout, random erasing, mixup or CutMix in the
  step, and gradient accumulation: every draw is made for the global batch,
  so 8 devices see the batches of one."""
  toolbox = {"augment.policy": "randaugment", "augment.cutout": 8,
             "augment.random_erasing": 0.5, "augment.mixup_alpha": 0.4,
             "augment.cutmix_alpha": 1.0, "optim.grad_accum_steps": 2}
  one, eight = probe(data_env, 1, **toolbox), probe(data_env, 8, **toolbox)
  assert len(one["losses"]) == 6
  assert abs(one["losses"][0] - eight["losses"][0]) < 1e-6
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=0, atol=1e-5)
  assert eight["validation"]["accuracy"] == one["validation"]["accuracy"]
  plain = probe(data_env, 1)
  assert abs(plain["losses"][0] - one["losses"][0]) > 1e-3  # the switches did something


@pytest.mark.cluster
def test_per_device_batchnorm_is_a_real_switch(data_env, mnist):
  """Per-device statistics on 8 sub-batches of 8 differ from global ones."""
  global_bn, per_device = probe(data_env, 8), probe(data_env, 8, "per_device")
  assert abs(per_device["losses"][0] - global_bn["losses"][0]) > 1e-4


@pytest.mark.cluster
def test_a_per_device_batchnorm_run_is_read_by_the_predictor(data_env, mnist, tmp_path):
  """Per-device BatchNorm's modules are named as nn.BatchNorm's, so the
  predictor (one device, one group) reads the run and gives its recorded test
  accuracy (it once left them unread: `GroupedBatchNorm_<i>` names)."""
  from cnn.inference import predictor  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "w"
  run_main(with_devices(data_env, 2), *SMALL, "--config.layers.batchnorm=per_device",
           f"--workdir={workdir}")
  recorded = json.loads((workdir / "results.json").read_text())["test_accuracy"]
  images, labels = mnist.load_split("test")
  p = predictor.load(str(workdir))
  assert float((p.logits(images).argmax(-1) == labels).mean()) == pytest.approx(recorded,
                                                                              abs=2e-4)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.cluster
def test_two_processes_match_one_process_with_four_devices(data_env, mnist, tmp_path):
  """Two processes x 2 devices started as SLURM's `srun` would (only its
  environment variables: JAX's own detection finds the job), sharing an empty
  TFDS_DATA_DIR that process 0 prepares while process 1 waits."""
  run_main(with_devices(data_env, 4), *SMALL, f"--workdir={tmp_path / 'single'}")
  port = free_port()
  empty_tfds = tmp_path / "empty_tfds"
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
           "SLURM_STEP_TASKS_PER_NODE": "2", "JAX_COORDINATOR_PORT": str(port),
           "TFDS_DATA_DIR": str(empty_tfds)}
  procs = [subprocess.Popen(
      [sys.executable, "main.py", *SMALL, f"--workdir={tmp_path / 'multi'}"],
      cwd=REPO, env={**with_devices(data_env, 2), **slurm, "SLURM_PROCID": str(i),
                     "SLURM_LOCALID": str(i)},
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    errors = [p.communicate(timeout=240)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
  assert "4 devices, 2 local, 2 processes (this is process 0)" in errors[0]
  assert "(this is process 1)" in errors[1]
  assert len(list(empty_tfds.glob("mnist/*/dataset_info.json"))) == 1
  assert not list(empty_tfds.glob("**/incomplete*"))
  single, multi = (json.loads((tmp_path / w / "results.json").read_text())
                   for w in ("single", "multi"))
  assert multi["devices"] == single["devices"] == 4
  assert multi["test_count"] == single["test_count"] == 10_000
  assert multi["test_accuracy"] == single["test_accuracy"]
  (s,), (m,) = ([
      json.loads(line) for line in (tmp_path / w / "metrics.jsonl").read_text().splitlines()
  ] for w in ("single", "multi"))
  np.testing.assert_allclose([m["train_loss"], m["val_loss"]], [s["train_loss"], s["val_loss"]],
                             rtol=0, atol=1e-5)
  assert m["val_accuracy"] == s["val_accuracy"]


def test_batch_size_not_divisible_by_devices_is_one_line(data_env, tmp_path):
  result = run_main(with_devices(data_env, 8), "--config=configs/tiny_mnist.py",
                    f"--workdir={tmp_path}", "--config.batch_size=100", check=False)
  assert only_error_line(result) == (
      "error: config.batch_size=100 must be a positive multiple of the 8 devices; "
      "e.g. --config.batch_size=96")
