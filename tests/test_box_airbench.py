"""tools/box_airbench.py and the kit's speedrun queue (issue #48 item 3):
airbench's scripts staged with their commit, the CIFAR-10 files their loader
reads written from the originals in torchvision's order, their printed table
read run by run, a script stopped after N runs or at its deadline, the visit
carrying them, and `land` keeping ours beside theirs. Their scripts need
CUDA; tests/airbench_standin.py stands in for them here."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from tools import accelerator_kit as kit
from tools import box_airbench

pytestmark = pytest.mark.xdist_group("test_accelerator_kit")

# airbench94_muon.py's table, as it prints it (a warm-up run, the run label on
# a run's first row only), then legacy/airbench94.py's columns.
MUON = """\
------------------------------------------------------------------------------
|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |
------------------------------------------------------------------------------
|  warmup  |      0  |     0.1000  |   0.1000  |               |        9.0000  |
|          |   eval  |     0.1000  |   0.1000  |       0.1000  |       11.0000  |
------------------------------------------------------------------------------
|       0  |      0  |     0.5000  |   0.6000  |               |        0.3000  |
|          |      1  |     0.7000  |   0.8000  |               |        0.6000  |
|          |   eval  |     0.9000  |   0.9300  |       0.9402  |        2.6001  |
------------------------------------------------------------------------------
|       1  |      0  |     0.5000  |   0.6000  |               |        0.3000  |
|          |   eval  |     0.9000  |   0.9300  |       0.9398  |        2.5900  |
------------------------------------------------------------------------------
|       2  |      0  |     0.5000  |   0.6000  |               |        0.3000  |
"""
LEGACY = """\
|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |
|       0  |      0  |      1.0000  |     0.5000  |   0.6000  |               |              0.5000  |
|          |   eval  |      0.5000  |     0.9000  |   0.9300  |       0.9410  |              3.9000  |
"""


def test_the_printed_table_is_read_run_by_run_without_the_warm_up():
  assert box_airbench.finished_runs(MUON) == [
      {"run": "0", "test_accuracy": 0.9402, "train_seconds": 2.6001},
      {"run": "1", "test_accuracy": 0.9398, "train_seconds": 2.59}]
  assert box_airbench.finished_runs(LEGACY) == [
      {"run": "0", "test_accuracy": 0.941, "train_seconds": 3.9}]
  assert box_airbench.finished_runs("Traceback (most recent call last):\n") == []


def standin_folder(tmp_path: Path, *names: str) -> Path:
  folder = tmp_path / "airbench"
  (folder / "cifar10").mkdir(parents=True)
  for split in ("train", "test"):
    (folder / "cifar10" / f"{split}.pt").write_bytes(b"stand-in")
  for name in names:
    shutil.copy(REPO / "tests" / "airbench_standin.py", folder / f"{name}.py")
  (folder / box_airbench.MANIFEST).write_text('{"commit": "stand-in"}')
  return folder


def test_a_script_is_stopped_after_n_runs_and_at_its_deadline(tmp_path, monkeypatch):
  folder = standin_folder(tmp_path, "airbench94_muon")
  result = box_airbench.run_script("airbench94_muon", folder, 3, 60, tmp_path / "a.log")
  assert [r["run"] for r in result["runs"]] == ["0", "1", "2"]
  assert result["exit_status"] == -15 and result["wall_s"] < 30  # SIGTERM once 3 had printed
  assert result["test_accuracy"]["n"] == 3 and result["train_seconds"]["median"] == 2.5
  monkeypatch.setenv("STANDIN_HANG", "1")
  hung = box_airbench.run_script("airbench94_muon", folder, 3, 3, tmp_path / "b.log")
  assert hung["runs"] == [] and hung["exit_status"] == -15 and "warmup" in hung["log_tail"]


def test_their_data_is_cifar10_in_the_files_order_with_int64_labels(archive_dir):
  arrays = box_airbench.torchvision_arrays(archive_dir)
  (train, train_labels), (test, test_labels) = arrays["train"], arrays["test"]
  assert train.shape == (50000, 32, 32, 3) and train.dtype == np.uint8
  assert test.shape == (10000, 32, 32, 3) and test_labels.dtype == np.int64
  assert arrays["classes"][:2] == ["airplane", "automobile"] and len(arrays["classes"]) == 10
  from cnn.datasets import archives, find_archives, get_spec  # pylint: disable=import-outside-toplevel
  root = find_archives(get_spec("cifar10"), archive_dir)
  files = archives._cifar_files(root, "cifar10", ("data_batch_1.bin", "test_batch.bin"))  # pylint: disable=protected-access
  for raw, images, labels in ((files["data_batch_1.bin"], train, train_labels),
                              (files["test_batch.bin"], test, test_labels)):
    record = np.frombuffer(raw[:3073], np.uint8)  # label byte, then the CHW planes
    assert labels[0] == record[0]
    np.testing.assert_array_equal(images[0], record[1:].reshape(3, 32, 32).transpose(1, 2, 0))


def test_the_pt_files_are_what_their_loader_reads(archive_dir, tmp_path):
  torch = pytest.importorskip("torch")  # on the box; not in CI's requirements
  box_airbench.write_data(archive_dir, tmp_path)
  data = torch.load(tmp_path / "cifar10" / "train.pt", map_location="cpu")  # weights_only: safe
  assert data["images"].shape == (50000, 32, 32, 3) and data["images"].dtype == torch.uint8
  assert data["labels"].dtype == torch.int64 and len(data["classes"]) == 10


def git(*args: str, cwd: Path) -> str:
  return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                        check=True, capture_output=True, text=True).stdout.strip()


def test_stage_copies_the_two_scripts_with_their_commit_from_a_clone_or_a_snapshot(tmp_path):
  clone = tmp_path / "cifar10-airbench"
  (clone / "legacy").mkdir(parents=True)
  (clone / "legacy" / "airbench94.py").write_text("print('94')\n")
  (clone / "airbench94_muon.py").write_text("print('muon')\n")
  git("init", "-q", cwd=clone)
  git("add", ".", cwd=clone)
  git("commit", "-qm", "x", cwd=clone)
  commit = git("rev-parse", "HEAD", cwd=clone)
  for source in (clone, tmp_path / "bare.git"):
    if source.name == "bare.git":
      git("clone", "-q", "--bare", str(clone), str(source), cwd=tmp_path)
    dest = tmp_path / f"staged-{source.name}"
    done = subprocess.run([sys.executable, "tools/box_airbench.py", "stage", "--airbench",
                           str(source), "--dest", str(dest)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["commit"] == commit
    assert (dest / "airbench94.py").read_text() == "print('94')\n"
    assert manifest["scripts"]["airbench94_muon"]["upstream_path"] == "airbench94_muon.py"
  done = subprocess.run([sys.executable, "tools/box_airbench.py", "stage", "--airbench",
                         str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert done.returncode == 2 and "pass --airbench a clone" in done.stderr


@pytest.fixture
def prepared_speedrun(tmp_path) -> Path:
  """A prepared .box/ folder (ignored by git) with airbench's scripts staged."""
  box = kit.BOX / f"test-{tmp_path.name}"
  (REPO / box / "wheels").mkdir(parents=True)
  (REPO / box / "data").mkdir()
  (REPO / box / "wheels" / "dm_pix-0.4.5-py3-none-any.whl").write_bytes(b"w" * 1000)
  parts = [{"name": f"part{i}.bin", "bytes": 1000, "sha256": "0"} for i in (1, 2)]
  for p in parts:
    (REPO / box / "data" / p["name"]).write_bytes(b"d" * 1000)
  (REPO / box / "data" / "manifest.json").write_text(json.dumps({"parts": parts}))
  (REPO / box / "resume" / "some_row").mkdir(parents=True)
  standin_folder(REPO / box)
  yield box
  shutil.rmtree(REPO / box)


def test_the_speedrun_visit_carries_airbench_and_no_row_checkpoint(prepared_speedrun):
  commands = kit.visit_commands("box", "abc1234", box=prepared_speedrun, queue="speedrun")
  assert [c["name"] for c in commands] == ["first", "main"]  # no "resume some_row"
  main = commands[-1]
  assert f"{prepared_speedrun}/airbench" in main["carry"] and len(main["command"]) <= 2000
  assert f"--queue speedrun --airbench {prepared_speedrun}/airbench" in main["command"]
  rows = kit.visit_commands("box", "abc1234", box=prepared_speedrun)
  assert [c["name"] for c in rows] == ["first", "resume some_row", "main"]
  assert "--queue rows" in rows[-1]["command"]


def test_land_keeps_ours_beside_airbench_s_in_one_file(tmp_path):
  out, scratch = tmp_path / "OUT", tmp_path / "scratch"
  out.mkdir()
  back = kit.Back(out, scratch)
  summary = lambda v: {"mean": v, "std": 0.001, "median": v, "n": 25}  # noqa: E731
  (back.root / "speedrun.json").write_text(json.dumps({
      "date": "2026-12-06", "device": "NVIDIA H200", "test_accuracy": summary(0.9405),
      "train_seconds": summary(2.5)}))
  (back.root / "airbench94_muon.json").write_text(json.dumps({
      "script": "airbench94_muon", "runs": [{}] * 25, "test_accuracy": summary(0.9401),
      "train_seconds": summary(2.1)}))
  back.publish()
  bench_dir = tmp_path / "bench"
  bench_dir.mkdir()
  done = subprocess.run([sys.executable, "tools/accelerator_kit.py", "land", str(out),
                         "--results-dir", str(tmp_path), "--speeds", str(tmp_path / "s.json"),
                         "--resume-dir", str(tmp_path / "resume"), "--readme", "",
                         "--bench-dir", str(bench_dir)],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  kept = json.loads(next(bench_dir.glob("record_speedrun_box_*.json")).read_text())
  assert kept["ours"]["test_accuracy"]["mean"] == 0.9405 and kept["device"] == "NVIDIA H200"
  assert kept["airbench94_muon"]["train_seconds"]["mean"] == 2.1 and "airbench94" not in kept
  assert "airbench94_muon: n=25, test accuracy 94.01 ± 0.10%, 2.100 ± 0.001 s each" in done.stdout


@pytest.mark.slow
def test_the_speedrun_queue_runs_ours_then_theirs_and_returns_each(data_env, tmp_path,
                                                                 monkeypatch):
  """At CPU size: ours (`python -m cnn.speedrun`, 2 seeds) then the two
  stand-ins, each stopped after 2 runs, each JSON in what returns; with too
  little time left a piece is not started and says so."""
  monkeypatch.setenv("CNN_ARCHIVE_DIR", data_env["CNN_ARCHIVE_DIR"])
  import argparse  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  out, scratch = tmp_path / "OUT", tmp_path / "scratch"
  out.mkdir()
  staged = standin_folder(tmp_path / "staged", *box_airbench.SCRIPTS)
  shutil.copytree(staged, scratch / "airbench")  # the .pt files the box would write
  args = argparse.Namespace(size="cpu", scratch=str(scratch), out=str(out), done=[],
                            until=time.time() + 400, queue="speedrun", airbench=str(staged))
  assert kit.Visit(args).run() == 0
  pieces = json.loads((out / "visit.json").read_text())["pieces"]
  assert pieces["speedrun"]["status"] == "done" and pieces["speedrun"]["seeds"] == 2, pieces
  assert "throughput" not in pieces and "tiny_cifar10" not in pieces  # no rows in this queue
  for name in box_airbench.SCRIPTS:
    assert pieces[name]["status"] == "done" and pieces[name]["runs"] == 2, pieces
    result = json.loads((scratch / "back" / f"{name}.json").read_text())
    assert result["staged"]["commit"] == "stand-in" and len(result["runs"]) == 2
  ours = json.loads((scratch / "back" / "speedrun.json").read_text())
  assert [r["seed"] for r in ours["runs"]] == [0, 1] and ours["compile_seconds"] > 0
  args.until = time.time() + 50
  kit.speedrun_pieces(kit.Visit(args))
  pieces = json.loads((out / "visit.json").read_text())["pieces"]
  assert all(pieces[n]["status"].startswith("not started") for n in ("speedrun", "airbench94"))
