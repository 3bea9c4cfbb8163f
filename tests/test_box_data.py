"""tools/box_data.py: CIFAR-10 through the MED codec bit for bit and small
enough for two commands; the datasets written here, then staged and assembled
the box's way (a subprocess that cannot import ml_collections, TensorFlow or
JAX) into the official files; a damaged or missing part refused with one line
before any file appears."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, only_error_line
from cnn.datasets import archives
from cnn.errors import UserError
from tools import box_data

MIB = 2**20
BATCH = "cifar10/cifar-10-batches-bin/data_batch_1.bin"
NOT_ON_THE_BOX = ("ml_collections", "tensorflow", "tensorflow_datasets", "jax")


@pytest.fixture(scope="module")
def box_env(tmp_path_factory) -> dict:
  """The box's python as far as this file cares: the packages it lacks (or that
  assembling must not wait for) raise ImportError."""
  blocked = tmp_path_factory.mktemp("blocked")
  for name in NOT_ON_THE_BOX:
    (blocked / name).mkdir()
    (blocked / name / "__init__.py").write_text(f"raise ImportError('no {name} on the box')\n")
  return {**os.environ, "PYTHONPATH": str(blocked)}


@pytest.fixture(scope="module")
def mnist_parts(archive_dir, tmp_path_factory) -> tuple[Path, dict]:
  """MNIST (11.6 MB) written as parts of 4 MiB: three of them."""
  out = tmp_path_factory.mktemp("parts")
  return out, box_data.write_parts(Path(archive_dir), ["mnist"], out, 4 * MIB)


def box_data_cli(env: dict, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "tools/box_data.py", *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def files_under(folder: Path) -> list[Path]:
  return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_cifar_codec_round_trips_bit_for_bit_under_62_percent(archive_dir):
  raw = Path(archive_dir, BATCH).read_bytes()[:1000 * box_data.CIFAR_RECORD]
  encoded = box_data.encode_cifar(raw)
  assert box_data.decode_cifar(encoded) == raw
  assert len(encoded) < 0.62 * len(raw)  # xz alone: 75 %; the predictor and RCT make it 55 %
  extremes = np.random.default_rng(0).choice(np.array([0, 1, 127, 128, 254, 255], np.uint8),
                                             (2, 3, 32, 32))  # where uint8 a + b - c wraps
  np.testing.assert_array_equal(box_data.med_inverse(box_data.med_residuals(extremes)), extremes)


def test_mnist_written_staged_and_assembled_the_box_way(mnist_parts, box_env, tmp_path):
  out, manifest = mnist_parts
  assert len(manifest["parts"]) == 3
  for part in manifest["parts"]:
    assert (out / part["name"]).stat().st_size == part["bytes"] <= 4 * MIB
  staging, data_dir = tmp_path / "parts", tmp_path / "data"
  for part in manifest["parts"]:
    added = box_data_cli(box_env, "add", "--part", out / part["name"], "--manifest",
                         out / "manifest.json", "--staging", staging)
    assert added.returncode == 0, added.stderr
  built = box_data_cli(box_env, "assemble", "--staging", staging, "--manifest",
                       out / "manifest.json", "--data-dir", data_dir)
  assert built.returncode == 0 and built.stderr == "", built.stderr
  assert len(built.stdout.splitlines()) == 1 and " s\n" in built.stdout
  names = sorted(p.name for p in files_under(data_dir))
  assert names == sorted(name for owner, name in archives.SHA256 if owner == "mnist")
  for name in names:
    got = hashlib.sha256((data_dir / "mnist" / name).read_bytes()).hexdigest()
    assert got == archives.SHA256[("mnist", name)]
  splits = archives.read(data_dir / "mnist", "mnist")
  assert splits["train"][0].shape == (60000, 28, 28, 1) and len(splits["test"][1]) == 10000
  assert not list(tmp_path.glob(".data.*"))  # the building folder is gone


def test_write_is_deterministic(mnist_parts, archive_dir, tmp_path):
  out, manifest = mnist_parts
  again = box_data.write_parts(Path(archive_dir), ["mnist"], tmp_path, 4 * MIB)
  assert again == manifest
  for name in ["manifest.json", *(p["name"] for p in manifest["parts"])]:
    assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_a_damaged_part_is_refused_by_add_with_one_line(mnist_parts, box_env, tmp_path):
  out, _ = mnist_parts
  damaged = tmp_path / "part2.bin"
  data = bytearray((out / "part2.bin").read_bytes())
  data[12345] ^= 0xFF
  damaged.write_bytes(data)
  done = box_data_cli(box_env, "add", "--part", damaged, "--manifest", out / "manifest.json",
                      "--staging", tmp_path / "parts")
  line = only_error_line(done)
  assert "part2.bin" in line and "carry it again" in line
  assert not files_under(tmp_path / "parts")


def test_a_missing_or_damaged_staged_part_stops_assemble_before_any_file(mnist_parts, box_env,
                                                                         tmp_path):
  out, manifest = mnist_parts
  staging, data_dir = tmp_path / "parts", tmp_path / "data"
  for name in ("part1.bin", "part3.bin"):
    box_data.add_part(out / name, out / "manifest.json", staging)
  args = ("assemble", "--staging", staging, "--manifest", out / "manifest.json", "--data-dir",
          data_dir)
  line = only_error_line(box_data_cli(box_env, *args))
  assert line == (f"error: part 2 of 3 is missing from {staging}: run the visit's command 2 "
                  "again")
  assert not files_under(data_dir)
  data = bytearray((out / "part2.bin").read_bytes())
  data[-1] ^= 1
  (staging / "part2.bin").write_bytes(data)
  line = only_error_line(box_data_cli(box_env, *args))
  assert "part 2 of 3" in line and "damaged" in line and "command 2 again" in line
  assert not files_under(data_dir) and not list(tmp_path.glob(".data.*"))


def test_write_refuses_a_source_that_is_not_the_original(archive_dir, tmp_path):
  shutil.copytree(Path(archive_dir, "mnist"), tmp_path / "mnist")
  labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
  data = bytearray(labels.read_bytes())
  data[-10] ^= 1
  labels.write_bytes(data)
  with pytest.raises(UserError, match="corrupt archive .*t10k-labels"):
    box_data.write_parts(tmp_path, ["mnist"], tmp_path / "out", MIB)
  with pytest.raises(UserError, match="unknown dataset 'cifar11'"):
    box_data.write_parts(tmp_path, ["cifar11"], tmp_path / "out", MIB)
  assert not files_under(tmp_path / "out")


def test_default_part_bytes_counts_what_git_sends(tmp_path):
  subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
  (tmp_path / "tracked.bin").write_bytes(b"t" * MIB)
  subprocess.run(["git", "add", "tracked.bin"], cwd=tmp_path, check=True)
  (tmp_path / "untracked.bin").write_bytes(b"u" * 2 * MIB)
  (tmp_path / ".gitignore").write_text("/ignored.bin\n")
  (tmp_path / "ignored.bin").write_bytes(b"i" * 4 * MIB)  # travels only when carried
  sent = 3 * MIB + len("/ignored.bin\n")
  assert box_data.default_part_bytes(tmp_path, 5 * MIB) == 64 * MIB - sent - 5 * MIB - MIB
  with pytest.raises(UserError, match="no room for a data part"):
    box_data.default_part_bytes(tmp_path, 60 * MIB)


@pytest.mark.slow
def test_cifar10_and_mnist_fit_two_commands_and_come_back_official(archive_dir, tmp_path):
  part_bytes = box_data.default_part_bytes(REPO, 0)
  out = tmp_path / "parts"
  manifest = box_data.write_parts(Path(archive_dir), ["cifar10", "mnist"], out, part_bytes)
  assert len(manifest["parts"]) <= 2
  assert all((out / p["name"]).stat().st_size <= part_bytes for p in manifest["parts"])
  staging, data_dir = tmp_path / "staging", tmp_path / "data"
  for part in manifest["parts"]:
    box_data.add_part(out / part["name"], out / "manifest.json", staging)
  files = box_data.assemble(staging, out / "manifest.json", data_dir)
  assert len(files) == 11
  for name, sha1 in archives.SHA1_EXTRACTED.items():
    archives.check(data_dir / "cifar10" / name, sha1, "sha1")
  for (owner, name), sha256 in archives.SHA256.items():
    if owner == "mnist":
      archives.check(data_dir / "mnist" / name, sha256, "sha256")
  assert archives.cifar_class_names(data_dir / "cifar10", "cifar10")[0] == "airplane"
  assert archives.read(data_dir / "cifar10", "cifar10")["train"][0].shape == (50000, 32, 32, 3)
