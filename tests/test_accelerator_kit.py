"""tools/accelerator_kit.py, the box's visit: the import closure of the box
(the carried wheels, installed as the box installs them, and nothing else of
TensorFlow, tfds, ml_collections or dm-pix), the visit's commands within the
device tool's limits, and what returns from the box landing here. The whole
visit at CPU size runs in tests/test_box_rehearsal.py (--rehearsal)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from tools import accelerator_kit as kit

pytestmark = pytest.mark.xdist_group("test_accelerator_kit")

BLOCKED = ("tensorflow", "tensorflow_datasets", "ml_collections", "dm_pix")
CARRIED = ("ml_collections", "dm_pix")  # requirements-accelerator.txt


@pytest.fixture(scope="module")
def box_env(data_env, tmp_path_factory) -> dict:
  """This machine as the box: the four packages unimportable (a package of
  each name that raises ImportError), except the wheels the kit carries,
  downloaded by the kit's own `wheels` command and installed the box's way
  (pip --no-index --no-deps --target) ahead of the blockers."""
  root = tmp_path_factory.mktemp("box")
  wheels = root / "wheels"
  got = subprocess.run([sys.executable, "tools/accelerator_kit.py", "wheels", "--dest",
                        str(wheels)], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert got.returncode == 0, got.stderr[-2000:]
  site = root / "site"
  installed = subprocess.run(
      [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
       "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels.glob("*.whl"))],
      capture_output=True, text=True, timeout=300)
  assert installed.returncode == 0, installed.stderr[-2000:]
  blocked = root / "blocked"
  for name in BLOCKED:
    (blocked / name).mkdir(parents=True)
    (blocked / name / "__init__.py").write_text(f"raise ImportError('no {name} on the box')\n")
  return {**data_env, "PYTHONPATH": f"{site}:{blocked}", "PYTHONUNBUFFERED": "1"}


def test_requirements_accelerator_lists_every_wheel_that_travels():
  wanted = kit.requirement_lines(REPO / "requirements-accelerator.txt")
  assert sorted(w.split("==")[0].replace("-", "_") for w in wanted) == sorted(CARRIED)


def test_only_the_carried_wheels_are_importable(box_env):
  probe = ("import importlib, json\nfound = {}\nfor name in %r:\n  try:\n"
           "    found[name] = importlib.import_module(name).__file__\n"
           "  except ImportError as e:\n    found[name] = 'ImportError: ' + str(e)\n"
           "print(json.dumps(found))") % (BLOCKED,)
  done = subprocess.run([sys.executable, "-c", probe], env=box_env, capture_output=True,
                        text=True, cwd=REPO, timeout=120)
  found = json.loads(done.stdout)
  site = box_env["PYTHONPATH"].split(":")[0]
  for name in CARRIED:
    assert found[name].startswith(site), found
  for name in set(BLOCKED) - set(CARRIED):
    assert found[name].startswith("ImportError"), found


def test_the_box_s_training_command_runs_on_the_carried_wheels_alone(box_env, tmp_path):
  """The row's own command (a vmapped seed sweep, data on the device, the
  TF-free archive reader), shrunk to a few steps, then its record."""
  workdir = tmp_path / "row"
  row = kit.cpu_size().rows[0]
  command = [sys.executable, *kit.row_command(row, 2, str(workdir))[1:],
             "--config.data.train_split=train[:256]", "--config.data.test_split=test[:500]",
             "--config.data.source=archives"]
  done = subprocess.run(command, env=box_env, cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  sweep = json.loads((workdir / "sweep.json").read_text())
  assert sweep["seeds"] == [0, 1]
  for seed in (0, 1):
    results = json.loads((workdir / f"seed_{seed}" / "results.json").read_text())
    assert results["dataset"] == "cifar10" and results["test_count"] == 500
  records = tmp_path / "records"
  recorded = subprocess.run(
      [sys.executable, "-m", "cnn.report.results_table", "record", str(workdir), "--name",
       row.name, "--hardware", "test", "--command", "test", "--results-dir", str(records)],
      env=box_env, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert recorded.returncode == 0, recorded.stderr[-3000:]
  assert sorted(p.name for p in (records / "weights").iterdir()) == [
      f"{row.name}_seed0.safetensors", f"{row.name}_seed1.safetensors"]


# ------------------------------------------------------------ the visit


@pytest.fixture
def prepared(tmp_path) -> Path:
  """A prepared folder inside .box/ (ignored by git, as carried paths must
  be), with two small data parts; removed afterwards."""
  box = kit.BOX / f"test-{tmp_path.name}"
  (REPO / box / "wheels").mkdir(parents=True)
  (REPO / box / "data").mkdir()
  for name in ("ml_collections-1.1.0-py3-none-any.whl", "dm_pix-0.4.5-py3-none-any.whl"):
    (REPO / box / "wheels" / name).write_bytes(b"w" * 1000)
  parts = [{"name": f"part{i}.bin", "bytes": 1000, "sha256": "0"} for i in (1, 2)]
  for p in parts:
    (REPO / box / "data" / p["name"]).write_bytes(b"d" * 1000)
  (REPO / box / "data" / "manifest.json").write_text(json.dumps({"parts": parts}))
  yield box
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(REPO / box)


def test_the_visit_is_first_then_main_within_the_limits(prepared):
  commands = kit.visit_commands("box", "abc1234", box=prepared)
  assert [c["name"] for c in commands] == ["first", "main"]
  for c in commands:
    assert len(c["command"]) <= 2000 and len(c["carry"]) <= 8 and c["timeout_s"] <= 600
    assert c["send_mib"] < 64
    for path in c["carry"]:
      assert (REPO / path).exists() and subprocess.run(
          ["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0
  first, main = commands
  assert f"{prepared}/data/part1.bin" in first["carry"] and "smoke" in first["command"]
  assert f"{prepared}/data/part2.bin" in main["carry"]
  assert "assemble" in main["command"] and "--until $((T0+570))" in main["command"]
  assert "--commit abc1234" in main["command"]


def test_a_part_too_large_for_one_command_is_one_line_before_the_box_starts(prepared):
  (REPO / prepared / "data" / "part2.bin").write_bytes(b"d" * (60 * 2**20))
  done = subprocess.run([sys.executable, "-c", f"""
import sys; sys.argv = ['kit']
from tools import accelerator_kit as kit
from cnn.errors import UserError
try:
  kit.visit_commands('box', 'x', box=kit.Path({str(prepared)!r}))
except UserError as e:
  print(e)
"""], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert "over 64 MiB" in done.stdout and "'main'" in done.stdout, done.stdout + done.stderr


def test_visit_without_prepare_says_to_prepare(tmp_path):
  done = subprocess.run([sys.executable, "-c", """
from tools import accelerator_kit as kit
from cnn.errors import UserError
try:
  kit.visit_commands('box', 'x', box=kit.Path('.box/nothing-here'))
except UserError as e:
  print(e)
"""], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert "run `python tools/accelerator_kit.py prepare` first" in done.stdout


# ---------------------------------------------------------- the return


def test_the_return_fits_the_limits_dropping_the_largest_weights_first(tmp_path):
  out, scratch = tmp_path / "OUT", tmp_path / "scratch"
  out.mkdir()
  back = kit.Back(out, scratch)
  records = back.root / "records"
  (records / "weights").mkdir()
  (records / kit.PUBLISHED).mkdir()
  sizes = {"small": 1 * 2**20, "big": 40 * 2**20, "huge": 50 * 2**20}
  for stem, size in sizes.items():  # over git's 2 MiB: recorded as published
    key, folder = ("weights", "weights") if size <= 2 * 2**20 else ("weights_published",
                                                                     kit.PUBLISHED)
    (records / folder / f"{stem}.safetensors").write_bytes(b"\0" * size)
    (records / f"{stem}.json").write_text(json.dumps({"name": stem, key: {"bytes": size}}))
  back.publish()
  files = sorted(p.name for p in out.iterdir())
  assert len(files) <= 8 - 1  # main.log is the eighth
  assert all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())
  assert sum(p.stat().st_size for p in out.iterdir()) <= 62 * 2**20
  visit = json.loads((out / "visit.json").read_text())
  assert visit["weights_dropped"] == ["huge.safetensors"]
  huge = json.loads((records / "huge.json").read_text())
  assert "weights_missing" in huge and "weights_published" not in huge
  assert "weights_published" in json.loads((records / "big.json").read_text())
  assert "weights" in json.loads((records / "small.json").read_text())


def test_land_puts_records_speeds_and_a_stopped_row_where_the_next_visit_finds_them(tmp_path):
  out, scratch = tmp_path / "OUT", tmp_path / "scratch"
  out.mkdir()
  back = kit.Back(out, scratch)
  (back.root / "records" / "weights").mkdir()
  (back.root / "records" / "row_seed0.json").write_text('{"name": "row"}')
  (back.root / "records" / "weights" / "row_seed0.safetensors").write_bytes(b"w" * 100)
  (back.root / "records" / kit.PUBLISHED).mkdir()
  (back.root / "records" / "deep_seed0.json").write_text('{"name": "deep"}')
  (back.root / "records" / kit.PUBLISHED / "deep_seed0.safetensors").write_bytes(b"d" * 300)
  (back.root / "resume" / "long_row" / "seed_0").mkdir(parents=True)
  (back.root / "resume" / "long_row" / "seed_0" / "ckpt").write_bytes(b"c" * 20_000)
  machine = {"backend": "gpu", "devices": ["NVIDIA H200"], "jax": "0.11.2", "date": "2026-12-04"}
  (back.root / "throughput.json").write_text(json.dumps({"size": "box", "machine": machine, "rows": [
      {"key": "resnet56_v1/float32/seeds1/det", "step_s": 0.004, "images_per_s": 32000,
       "compile_s": 9.0}]}))
  back.visit["pieces"]["row"] = {"status": "recorded", "estimate_s": 100, "wall_s": 150}
  summary = lambda v: {"mean": v, "std": 0.001, "n": 25}  # noqa: E731
  (back.root / "speedrun.json").write_text(json.dumps({
      "date": "2026-12-06", "device": "NVIDIA H200", "test_accuracy": summary(0.9405),
      "train_seconds": summary(2.5)}))
  back.publish()
  results, speeds, resume = tmp_path / "results", tmp_path / "speeds.json", tmp_path / "resume"
  bench_dir, published = tmp_path / "bench", tmp_path / "published"
  results.mkdir()
  bench_dir.mkdir()
  done = subprocess.run([sys.executable, "tools/accelerator_kit.py", "land", str(out),
                         "--results-dir", str(results), "--speeds", str(speeds),
                         "--resume-dir", str(resume), "--readme", "",
                         "--bench-dir", str(bench_dir), "--publish-dir", str(published)],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert (results / "row_seed0.json").exists()
  assert (results / "weights" / "row_seed0.safetensors").read_bytes() == b"w" * 100
  assert (results / "deep_seed0.json").exists()  # its weights outside the repository
  assert (published / "deep_seed0.safetensors").read_bytes() == b"d" * 300
  assert not (results / "weights" / "deep_seed0.safetensors").exists()
  kept = json.loads(speeds.read_text())["box"]["resnet56_v1/float32/seeds1/det"]
  assert kept["step_s"] == 0.004 and kept["on"] == "1x NVIDIA H200 (jax 0.11.2)"
  assert "estimated 100 s, took 150 s (1.50x)" in done.stdout
  kept = json.loads(next(bench_dir.glob("record_speedrun_box_*.json")).read_text())
  assert kept["ours"]["test_accuracy"]["mean"] == 0.9405
  assert "ours: n=25, test accuracy 94.05 ± 0.10%" in done.stdout
  from tools import carry  # pylint: disable=import-outside-toplevel
  carry.unpack(resume / "long_row", tmp_path / "again", replace=False)
  assert (tmp_path / "again" / "seed_0" / "ckpt").read_bytes() == b"c" * 20_000


def test_estimates_come_from_the_measured_cells_and_none_without():
  size = kit.box_size()
  row = size.rows[0]
  speeds = {"resnet56_v1/float32/seeds1/det": 0.004, "resnet56_v1/float32/seeds5/det": 0.012}
  one = kit.estimate_row_s(row, 1, 63960, speeds, size)
  five = kit.estimate_row_s(row, 5, 63960, speeds, size)
  three = kit.estimate_row_s(row, 3, 63960, speeds, size)
  assert one == pytest.approx(size.startup_s + 63960 * 0.004 * size.overhead)
  assert one < three < five
  assert kit.estimate_row_s(row, 3, 63960, {}, size) is None
  assert kit.row_steps(row) == 164 * 390  # He et al.'s 64k iterations
  assert kit.row_steps(size.rows[2]) == 200 * 390  # VGG-16 on all 50k, paper protocol


def test_balanced_parts_share_the_room_and_still_assemble_to_the_official_files(
    archive_dir, tmp_path):
  """prepare cuts the stream into equal parts (the tree may then grow before
  a visit); the box's add and assemble take them as box_data wrote them."""
  from tools import box_data  # pylint: disable=import-outside-toplevel
  parts_dir = tmp_path / "parts"
  written = box_data.write_parts(Path(archive_dir), ["mnist"], parts_dir, 5 * 2**20)
  assert [p["bytes"] for p in written["parts"]][0] == 5 * 2**20 and len(written["parts"]) == 3
  balanced = kit.balance_parts(parts_dir)
  sizes = [p["bytes"] for p in balanced]
  assert max(sizes) - min(sizes) <= 1 and sum(sizes) == sum(p["bytes"] for p in written["parts"])
  for p in balanced:
    box_data.add_part(parts_dir / p["name"], parts_dir / "manifest.json", tmp_path / "staging")
  files = box_data.assemble(tmp_path / "staging", parts_dir / "manifest.json", tmp_path / "data")
  assert sorted(f.name for f in files) == sorted(
      name for (dataset, name) in box_data.archives.SHA256 if dataset == "mnist")

