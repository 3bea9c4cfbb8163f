"""tools/accelerator_kit.py, the accelerator kit, run as on a rented box:
real processes on real MNIST (its `tiny` queue), an image without TensorFlow,
a budget that stops the training row mid-way, the kit SIGKILLed, DIR carried
to a "fresh machine" in parts. The row must end bitwise equal to an
uninterrupted run of the same command."""
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnn import workdir_lock
from conftest import REPO
from tools import accelerator_kit  # the queue table: the row's exact command
from tools import carry

# Its module-scoped fixtures are made once: the whole file runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_accelerator_kit")

KIT = [sys.executable, "tools/accelerator_kit.py"]
ROW = next(p for p in accelerator_kit.tiny_queue() if p["kind"] == "train")
STEPS = 128  # 4 epochs of 32
MARGIN = "12"  # seconds from the SIGTERM to the budget's end (SIGKILL 5 s before it)
PROGRESS = re.compile(r"epoch \d+/\d+ step \d+/\d+ \|")
COMPARED = ("test_accuracy", "test_loss", "train_loss", "last_test_accuracy", "steps")


@pytest.fixture(scope="module")
def kit_env(data_env, tmp_path_factory) -> dict:
  """The box's image: TensorFlow and tfds unimportable (a package of each
  name that raises ImportError), the data read from the original files."""
  blocked = tmp_path_factory.mktemp("no_tf")
  for name in ("tensorflow", "tensorflow_datasets"):
    (blocked / name).mkdir()
    (blocked / name / "__init__.py").write_text(f"raise ImportError('no {name} here (test)')\n")
  return {**data_env, "PYTHONPATH": str(blocked), "PYTHONUNBUFFERED": "1"}


def kit(env: dict, *args) -> subprocess.CompletedProcess:
  return subprocess.run([*KIT, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900)


def row_state(out: Path) -> dict:
  return json.loads((out / "state.json").read_text())["pieces"][ROW["name"]]


def newest_step(workdir: Path) -> int:
  return max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def tree(root: Path, files: list[Path]) -> dict[str, str]:
  return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def reference(kit_env, tmp_path_factory) -> tuple[Path, float, float]:
  """The row's command, uninterrupted; the seconds after its start at which
  its first and last progress lines came (where its training lies)."""
  workdir = tmp_path_factory.mktemp("reference")
  start = time.monotonic()
  proc = subprocess.Popen([sys.executable, "main.py", f"--config={ROW['config']}",
                           f"--workdir={workdir}", *ROW["overrides"]], cwd=REPO, env=kit_env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  seen = [time.monotonic() - start for line in proc.stderr if PROGRESS.search(line)]
  assert proc.wait(timeout=600) == 0 and len(seen) > 2
  return workdir, seen[0], seen[-1]


def stop_mid_row(env: dict, out: Path, results: Path, first: float, last: float):
  """Calls the kit with a budget whose SIGTERM falls early in the row's
  training, as the reference run timed it. The machine is shared, so a try
  may stop it before its first progress line (the next one resumes, with a
  little more budget) or too late to kill it mid-way afterwards (then it
  starts over, with less)."""
  budget = float(MARGIN) + first + 0.4 * (last - first)
  for _ in range(6):
    done = kit(env, "--out", out, "--queue", "tiny", "--results-dir", results, "--only", "train",
               "--budget-seconds", f"{budget:.1f}", "--margin-seconds", MARGIN,
               "--min-piece-seconds", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    row = row_state(out)
    if row["status"] == "partial" and row.get("total_steps") is None:  # before any progress
      budget += 3
    elif row["status"] == "partial" and row["step"] <= STEPS - 48:
      return done, row
    else:  # too late: start over
      shutil.rmtree(out)
      shutil.rmtree(results, ignore_errors=True)
      budget -= 0.3 * (last - first)
  raise AssertionError(f"no try stopped the row mid-way:\n{done.stdout}")


def sigkill_mid_row(env: dict, out: Path, common: list) -> dict:
  """Starts the kit, SIGKILLs it once the resumed row has logged progress;
  whether its trainer exited then, and the row's checkpoint steps before and after."""
  log, workdir = out / "logs" / f"{ROW['name']}.log", out / "runs" / ROW["name"]
  before, offset = newest_step(workdir), log.stat().st_size
  proc = subprocess.Popen([*KIT, "--out", str(out), *map(str, common), "--only", "train",
                           "--budget-seconds", "600"], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  give_up = time.monotonic() + 300
  while not PROGRESS.search(log.read_bytes()[offset:].decode(errors="replace")):
    assert proc.poll() is None and time.monotonic() < give_up, "no progress after the resume"
    time.sleep(0.1)
  trainer = json.loads((workdir / workdir_lock.LOCK_NAME).read_text())
  proc.kill()
  proc.wait()
  gone_by = time.monotonic() + 120
  while workdir_lock.process_start_time(trainer["pid"]) == trainer["start"] and \
      time.monotonic() < gone_by:
    time.sleep(0.2)
  return {"trainer_exited": workdir_lock.process_start_time(trainer["pid"]) != trainer["start"],
          "before": before, "after": newest_step(workdir), "resumed_log": log.read_text(),
          "finished_alone": (workdir / "results.json").exists()}


@pytest.fixture(scope="module")
def flow(kit_env, reference, tmp_path_factory) -> dict:
  """The whole story of the row: stopped by the budget, DIR packed and
  unpacked elsewhere, resumed there and the kit SIGKILLed, then finished."""
  _, first, last = reference
  root = tmp_path_factory.mktemp("kit")
  out, moved, parts, results = root / "DIR", root / "DIR2", root / "parts", root / "results"
  common = ["--queue", "tiny", "--results-dir", results]
  facts = {"out": out, "moved": moved, "parts": parts, "results": results}
  facts["budget_call"], facts["stopped_row"] = stop_mid_row(kit_env, out, results, first, last)
  facts["pack"] = kit(kit_env, "pack", "--out", out, "--parts", parts, "--part-mib", "0.25")
  facts["unpack"] = kit(kit_env, "unpack", "--parts", parts, "--out", moved)
  facts["packed_tree"] = tree(out, carry.files_to_pack(out, accelerator_kit.skipped_when_packing))
  facts["unpacked_tree"] = tree(moved, [p for p in moved.rglob("*") if p.is_file()])
  facts["killed"] = sigkill_mid_row(kit_env, moved, common)
  facts["final"] = kit(kit_env, "--out", moved, *common, "--only", "train",
                       "--budget-seconds", "900")
  return facts


@pytest.mark.slow
def test_a_small_budget_stops_the_row_and_reruns_finish_it_bitwise_equal(flow, reference):
  stopped, row = flow["budget_call"], flow["stopped_row"]
  assert 0 < row["step"] < STEPS and row["total_steps"] == STEPS
  assert re.search(rf"{ROW['name']}: stopped by the budget at step {row['step']} of {STEPS} "
                   r"\(piece \d, \d+ s\); the next call resumes it", stopped.stdout), stopped.stdout
  assert re.search(r"^queue tiny: 0/4 pieces done; next: throughput_resnet20; DIR [\d.]+ MiB$",
                   stopped.stdout.splitlines()[-1]), stopped.stdout
  final = flow["final"]
  assert final.returncode == 0, final.stdout + final.stderr
  done = row_state(flow["moved"])
  assert done["status"] == "done" and done["attempts"] >= 3 and done["step"] == STEPS
  workdir, ref = flow["moved"] / "runs" / ROW["name"], reference[0]
  ours, theirs = (json.loads((w / "results.json").read_text()) for w in (workdir, ref))
  for key in COMPARED:
    assert ours[key] == theirs[key], key
  assert (workdir / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()
  entry = json.loads(Path(done["record"]).read_text())
  assert entry["resumes"] == done["attempts"] - 1
  assert entry["test_accuracy"] == theirs["test_accuracy"]
  assert entry["command"] == done["command"] and "--config.checkpoint.keep=1" in entry["command"]


@pytest.mark.slow
def test_a_sigkilled_kit_leaves_no_trainer_and_the_rerun_finishes(flow):
  killed = flow["killed"]
  assert killed["trainer_exited"], "main.py outlived the SIGKILLed kit"
  # it got SIGTERM as the kit died: it saved its step and stopped, not trained on to the end
  assert killed["before"] < killed["after"] < STEPS and not killed["finished_alone"]
  final = flow["final"].stdout
  assert f"{ROW['name']}: the last call ended during this piece; it continues" in final
  assert "resumed from" in (flow["moved"] / "logs" / f"{ROW['name']}.log").read_text()
  assert re.search(r"^queue tiny: 1/4 pieces done; next: throughput_resnet20; DIR",
                   final.splitlines()[-1]), final


@pytest.mark.slow
def test_pack_unpack_carries_dir_in_parts_and_it_resumes_there(flow):
  assert flow["pack"].returncode == 0 and flow["unpack"].returncode == 0, flow["pack"].stderr
  manifest = json.loads(next(flow["parts"].glob("*.pack.json")).read_text())
  sizes = [p.stat().st_size for p in sorted(flow["parts"].glob("DIR.tar.*"))]
  assert len(sizes) == len(manifest["parts"]) >= 2 and max(sizes) <= 0.25 * 2**20
  assert flow["unpacked_tree"] == flow["packed_tree"]
  assert any(name.startswith(f"runs/{ROW['name']}/checkpoints/") for name in flow["packed_tree"])
  step = flow["stopped_row"]["step"]
  assert f"at step {step} (epoch" in flow["killed"]["resumed_log"]  # from the carried checkpoint


@pytest.mark.slow
def test_record_at_home_copies_the_finished_row_and_trains_nothing(flow, kit_env, tmp_path):
  home, before = tmp_path / "results", row_state(flow["moved"])
  done = kit(kit_env, "record", "--out", flow["moved"], "--results-dir", home)
  assert done.returncode == 0, done.stdout + done.stderr
  assert f"{ROW['name']}: recorded {home / 'tiny_mnist_seed0.json'}" in done.stdout
  ours, boxs = (json.loads((d / "tiny_mnist_seed0.json").read_text())
                for d in (home, flow["results"]))
  ours_w, boxs_w = ours.pop("weights"), boxs.pop("weights")  # safetensors' header order varies
  assert ours == boxs and (home / ours_w["file"]).exists()
  assert (ours_w["bytes"], ours_w["step"]) == (boxs_w["bytes"], boxs_w["step"])
  after = row_state(flow["moved"])
  assert (after["attempts"], after["seconds"]) == (before["attempts"], before["seconds"])


# The results table lives in README.md, the speedrun block in docs/experiments.md.
README = "# x\n<!-- results-table:begin -->\n<!-- results-table:end -->\n"
EXPERIMENTS = "# y\n<!-- speedrun:begin -->\n<!-- speedrun:end -->\n"


@pytest.mark.slow
def test_the_rest_of_the_queue_finishes_it_and_renders_the_docs(flow, kit_env, tmp_path):
  """Throughput (JAX, and PyTorch where torch is installed), the stacked seeds
  and the speedrun piece on the DIR whose row is done (about 1 min more on 2 cores)."""
  readme, experiments = tmp_path / "README.md", tmp_path / "experiments.md"
  readme.write_text(README)
  experiments.write_text(EXPERIMENTS)
  done = kit(kit_env, "--out", flow["moved"], "--queue", "tiny", "--results-dir",
             flow["results"], "--budget-seconds", "900", "--readme", readme,
             "--speedrun-doc", experiments)
  assert done.returncode == 0, done.stdout + done.stderr
  assert re.search(r"^queue tiny: 4/4 pieces done; next: nothing, the queue is done; DIR",
                   done.stdout.splitlines()[-1]), done.stdout
  assert "| `tiny_mnist` |" in readme.read_text() and "| 0 | " in experiments.read_text()
  report = kit(kit_env, "report", "--out", flow["moved"])
  assert "| resnet20 | float32 | 8 |" in report.stdout
  results = flow["moved"] / "results"
  grid = json.loads((results / "throughput_resnet20.json").read_text())
  (row,) = grid["rows"]
  assert (row["dtype"], row["batch_size"], row["jax_steps"]) == ("float32", 8, 2)
  assert row["jax_images_per_s"] > 0 and len(row["jax_samples"]) == 2
  if importlib.util.find_spec("torch"):
    assert row["torch"] == "ok" and row["torch_images_per_s"] > 0
    ratio = row["jax_images_per_s"] / row["torch_images_per_s"]  # of the rounded medians
    assert row["jax_vs_torch"] == pytest.approx(ratio, abs=2e-3)
  else:
    assert row["torch"] == "no torch" and row["torch_images_per_s"] is None
  assert grid["machine"]["backend"] == "cpu" and grid["machine"]["jaxlib"]
  (stacked,) = json.loads((results / "sweep_resnet20.json").read_text())["rows"]
  assert (stacked["seeds"], stacked["batch_size"], stacked["steps"]) == (2, 8, 2)
  assert stacked["stacked_vs_sequential"] == pytest.approx(
      stacked["stacked_images_per_s"] / stacked["one_seed_images_per_s"])
  assert "| 2 | " in report.stdout and "Seed sweep step, resnet20_v1, batch 8" in report.stdout
  run = json.loads((results / "speedrun_seed0.json").read_text())["run"]
  assert run["epochs"] == 1 and run["pieces"] == 1
  assert (run["time_to_target_s"] is not None) == (run["test_accuracy"] >= 0.94)
  table = json.loads((results / "speedrun.json").read_text())
  assert [r["seed"] for r in table["runs"]] == [0]
  seed = flow["moved"] / "runs" / "speedrun_seed0"
  assert (seed / "results.json").exists() and not (seed / "checkpoints").exists()


def test_pack_refuses_damaged_parts_and_leaves_locks_behind(tmp_path, kit_env):
  out = tmp_path / "DIR"
  (out / "runs" / "r" / "checkpoints" / "7.orbax-checkpoint-tmp-1").mkdir(parents=True)
  (out / "state.json").write_text("{}")
  (out / "kit.lock").write_text("{}")
  (out / "runs" / "r" / "trainer.lock").write_text("{}")
  (out / "runs" / "r" / "big.bin").write_bytes(bytes(range(256)) * 2000)  # 0.49 MiB
  packed = kit(kit_env, "pack", "--out", out, "--parts", tmp_path / "p", "--part-mib", "0.2")
  assert packed.returncode == 0, packed.stderr
  unpacked = kit(kit_env, "unpack", "--parts", tmp_path / "p", "--out", tmp_path / "back")
  assert unpacked.returncode == 0, unpacked.stderr
  assert sorted(str(p.relative_to(tmp_path / "back")) for p in (tmp_path / "back").rglob("*")
                if p.is_file()) == ["runs/r/big.bin", "state.json"]
  assert (tmp_path / "back/runs/r/big.bin").read_bytes() == (out / "runs/r/big.bin").read_bytes()
  again = kit(kit_env, "unpack", "--parts", tmp_path / "p", "--out", tmp_path / "back")
  assert again.returncode == 2 and "--replace" in again.stderr
  part = tmp_path / "p" / "DIR.tar.001"
  part.write_bytes(part.read_bytes()[:-1] + b"x")
  damaged = kit(kit_env, "unpack", "--parts", tmp_path / "p", "--out", tmp_path / "new")
  assert damaged.returncode == 2 and damaged.stderr.strip() == (
      f"error: missing or damaged parts in {tmp_path / 'p'}: DIR.tar.001; copy them again")


@pytest.mark.parametrize("args,says", [
    (["--queue", "nope"], "error: unknown queue 'nope'; valid queues: full, tiny"),
    (["--queue", "tiny", "--only", "resnet20v1_cifar10"], "error: unknown piece "
     "'resnet20v1_cifar10' for --only; valid: speedrun, speedrun_seed0, sweep, sweep_resnet20, "
     "throughput, throughput_resnet20, tiny_mnist, train"),
    (["--queue", "tiny", "--budget-seconds", "30"], "error: throughput_resnet20 needs about "
     "125 s, more than the whole budget of 30 s; raise --budget-minutes"),
])
def test_what_the_user_can_fix_is_one_line_and_status_2(tmp_path, kit_env, args, says):
  result = kit(kit_env, "--out", tmp_path / "DIR", *args)
  assert result.returncode == 2 and result.stderr.strip() == says, result.stderr


def test_an_unwritable_dir_is_one_line(tmp_path, kit_env):
  blocker = tmp_path / "file"
  blocker.write_text("")
  result = kit(kit_env, "--out", blocker / "DIR", "--queue", "tiny")
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
  assert result.stderr.startswith(f"error: --out {blocker / 'DIR'} is not writable (")
  assert result.stderr.strip().endswith("choose another --out")


def test_a_training_child_s_own_error_line_is_the_kit_s(tmp_path, kit_env):
  """main.py's one-line error (here: no data files) comes out as the kit's, status 2."""
  env = {k: v for k, v in kit_env.items() if k != "CNN_ARCHIVE_DIR"}
  result = kit(env, "--out", tmp_path / "DIR", "--queue", "tiny", "--only", "train")
  assert result.returncode == 2, result.stdout + result.stderr
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith("error: no original files for 'mnist'") and "CNN_ARCHIVE_DIR" in line
  assert line.endswith(f"(log: {tmp_path / 'DIR' / 'logs' / 'tiny_mnist.log'})")
  assert row_state(tmp_path / "DIR")["last_error"]
