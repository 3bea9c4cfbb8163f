"""tools/box_rehearsal.py, the box emulated here: each of the device tool's
limits enforced as the tool enforces it (on a tiny git checkout, bash-only
commands, no Python 3.12 env), and, with --rehearsal, the accelerator kit's
whole visit at CPU size run through it."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnn.errors import UserError
from conftest import REPO, only_error_line
from tools import box_rehearsal as box

MIB = 2**20


@pytest.fixture
def repo(tmp_path) -> Path:
  """A checkout with a tracked file, an ignored folder to carry and an ignored
  file that must not travel unless carried."""
  root = tmp_path / "repo"
  (root / "kept").mkdir(parents=True)
  (root / ".gitignore").write_text("kept/\nlocal.txt\n")
  (root / "tracked.txt").write_text("tracked\n")
  (root / "kept" / "data.bin").write_bytes(b"carried")
  (root / "local.txt").write_text("stays here\n")
  subprocess.run(["git", "init", "-q"], cwd=root, check=True)
  subprocess.run(["git", "add", "."], cwd=root, check=True)
  (root / "untracked.txt").write_text("travels\n")  # untracked, not ignored
  return root


def rehearse(repo: Path, tmp_path: Path, *commands: dict, results: str = "results") -> list:
  """run_visit on the tiny checkout; commands default to 60 s and no carry."""
  visit = [{"name": f"c{i}", "timeout_s": 60, "carry": [], **c} for i, c in enumerate(commands)]
  return box.run_visit(visit, tmp_path / results, env_dir=None, repo=repo,
                       box_dir=tmp_path / "cnnbox", say=lambda _: None)


def test_commands_over_the_limits_are_refused_before_any_runs(repo, tmp_path):
  ran = tmp_path / "ran"
  longest = f"touch {ran}; : " + "x" * box.MAX_COMMAND_CHARS
  outcome = rehearse(repo, tmp_path, {"command": longest[:2000]},
                     {"command": "true" + " " * 1997},
                     {"command": "true", "timeout_s": 601},
                     {"command": "true", "carry": ["kept"] * 9})
  assert not outcome[0].refused  # 2,000 characters: allowed
  assert "2001 characters" in outcome[1].refused[0]
  assert "601" in outcome[2].refused[0]
  assert "9 carry paths" in outcome[3].refused[0]
  assert all(r.rc is None for r in outcome) and not ran.exists()  # nothing ran
  assert not any(r["ok"] for r in json.loads((tmp_path / "results" / "rehearsal.json").read_text()))


def test_carry_must_exist_and_be_ignored(repo, tmp_path):
  outcome = rehearse(repo, tmp_path, {"command": "true", "carry": ["tracked.txt"]},
                     {"command": "true", "carry": ["untracked.txt", "missing", "../repo"]})
  assert "not ignored by git" in outcome[0].refused[0]
  assert ["not ignored" in outcome[1].refused[0], "does not exist" in outcome[1].refused[1],
          "not a path inside" in outcome[1].refused[2]] == [True] * 3
  carried = rehearse(repo, tmp_path, {"command": 'cp kept/data.bin "$OUT/got"', "carry": ["kept"]},
                     {"command": "test ! -e kept && test ! -e local.txt && test ! -e .git "
                                 "&& cat tracked.txt untracked.txt"})
  assert [r.ok for r in carried] == [True, True]
  assert (tmp_path / "results" / "01-c0" / "got").read_bytes() == b"carried"


def test_a_tree_over_64_mib_is_refused(repo, tmp_path):
  with open(repo / "kept" / "big.bin", "wb") as f:
    f.truncate(box.MAX_TREE_BYTES + MIB)  # sparse: no disk, no time
  assert rehearse(repo, tmp_path, {"command": "true"})[0].ok  # not carried: stays here
  outcome = rehearse(repo, tmp_path, {"command": "true", "carry": ["kept"]})
  assert outcome[0].refused == ["sends 65.0 MiB, over 64 MiB"]


def test_what_comes_back_from_out(tmp_path):
  out = tmp_path / "out"
  (out / "a" / "b" / "c").mkdir(parents=True)
  (out / "a" / "b" / "ok.txt").write_text("2 folders down")
  (out / "a" / "b" / "c" / "deep.txt").write_text("3 folders down")
  (out / "has space").write_text("odd name")
  (out / "link").symlink_to(out / "has space")
  with open(out / "big", "wb") as f:
    f.truncate(box.MAX_FILE_BACK_BYTES + MIB)
  back, left = box.files_back(out)
  assert back == ["a/b/ok.txt"]
  assert sorted(left) == ["'has space' (a name with odd characters)", "a/b/c (a folder too deep)",
                          "big (over 16 MiB)", "link (a link)"]
  many = tmp_path / "many"
  many.mkdir()
  for i in range(9):
    (many / f"f{i}").write_text(str(i))
  back, left = box.files_back(many)
  assert len(back) == 8 and left == ["f8 (over 8 files)"]


def test_a_left_out_file_fails_the_visit_and_the_rest_comes_back(repo, tmp_path):
  nine = 'for i in 1 2 3 4 5 6 7 8 9; do echo $i > "$OUT/f$i"; done'
  outcome = rehearse(repo, tmp_path, {"command": nine}, {"command": "true"})
  assert outcome[0].rc == 0 and outcome[0].left_out == ["f9 (over 8 files)"]
  assert not outcome[0].ok and outcome[1].rc is None  # the visit stopped there
  assert sorted(os.listdir(tmp_path / "results" / "01-c0")) == [f"f{i}" for i in range(1, 9)]


@pytest.mark.parametrize("command, rcs", [("sleep 30", (124,)),
                                          ("trap '' TERM; sleep 30", (137,))])
def test_past_its_timeout_the_command_is_killed_and_out_still_comes_back(
    repo, tmp_path, monkeypatch, command, rcs):
  monkeypatch.setattr(box, "KILL_GRACE_S", 0.5)
  outcome = rehearse(repo, tmp_path, {"command": f'echo early > "$OUT/early"; echo said; {command}',
                                      "timeout_s": 1})
  assert outcome[0].rc in rcs and outcome[0].seconds < 5
  assert (tmp_path / "results" / "01-c0" / "early").read_text() == "early\n"
  assert (tmp_path / "results" / "01-c0.output_tail.txt").read_text() == "said\n"


def test_the_box_stays_warm_within_a_visit_only(repo, tmp_path):
  cnnbox = tmp_path / "cnnbox"
  (cnnbox / "stale").mkdir(parents=True)  # a machine used before: gone when a visit starts
  first = rehearse(repo, tmp_path, {"command": f"test ! -e {cnnbox}/stale && mkdir -p {cnnbox} "
                                               f"&& echo warm > {cnnbox}/state"},
                   {"command": f'cp {cnnbox}/state "$OUT/state"'})
  assert [r.ok for r in first] == [True, True]
  assert (tmp_path / "results" / "02-c1" / "state").read_text() == "warm\n"
  second = rehearse(repo, tmp_path, {"command": f"test ! -e {cnnbox}/state"})
  assert second[0].ok


def test_commands_see_the_box_environment_not_ours(repo, tmp_path, monkeypatch):
  for name in ("CNN_ARCHIVE_DIR", "TFDS_DATA_DIR", "JAX_PLATFORMS", "XLA_FLAGS", "PYTHONPATH"):
    monkeypatch.setenv(name, "leaked")
  rehearse(repo, tmp_path, {"command": 'env -0 > "$OUT/env"'})
  seen = (tmp_path / "results" / "01-c0" / "env").read_text().split("\0")
  names = {line.split("=", 1)[0] for line in seen if line} - {"PWD", "SHLVL", "_"}
  assert names == {"PATH", "HOME", "LANG", "OUT"}


def test_mistakes_in_the_visit_are_one_line_errors(repo, tmp_path):
  with pytest.raises(UserError, match="needs a non-empty"):
    box.run_visit([{"command": "true"}], tmp_path / "r", env_dir=None, repo=repo,
                  box_dir=tmp_path / "cnnbox")
  visit = tmp_path / "visit.json"
  visit.write_text('[{"name": "a", "command": "true"}]')
  result = subprocess.run([sys.executable, "tools/box_rehearsal.py", "run", str(visit),
                           "--env", str(tmp_path / "no-env")],
                          cwd=REPO, capture_output=True, text=True, check=False)
  assert "no finished rehearsal env" in only_error_line(result)


def kit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "tools/accelerator_kit.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1800, check=False)


def rehearse_visit(env_dir: Path, results: Path, recorded: Path, queue: str = "rows") -> dict:
  """`visit --json --size cpu` through the emulated box; the main command's
  visit.json, after every command succeeded within its limits."""
  got = kit("visit", "--json", "--size", "cpu", "--results-dir", str(recorded), "--queue", queue)
  assert got.returncode == 0, f"accelerator_kit.py visit --json --size cpu:\n{got.stderr[-3000:]}"
  visit = json.loads(got.stdout)
  outcome = box.run_visit(visit, results, env_dir=env_dir)
  report = "\n".join(r.line(i) for i, r in enumerate(outcome, 1))
  tails = sorted(results.glob("*.output_tail.txt"))
  assert all(r.ok for r in outcome), f"{report}\n{tails[-1].read_text()[-3000:] if tails else ''}"
  main = sorted(p for p in results.iterdir() if p.is_dir() and p.name.endswith("-main"))[-1]
  print(report)
  print((main / "main.log").read_text())
  return {"visit": visit, "dir": main, "json": json.loads((main / "visit.json").read_text())}


@pytest.mark.rehearsal
def test_the_kits_visit_passes_its_rehearsal(tmp_path, data_env):
  """The accelerator kit's visits at CPU size, command by command on the
  emulated box (the Python 3.12 env with jax 0.11.2 and none of TensorFlow,
  tfds, ml_collections, dm-pix; the tree and carried paths within 64 MiB;
  each command inside its timeout with all its $OUT back): `prepare` here;
  visit 1 assembles CIFAR-10 from its parts, times the cells, trains and
  records the short row and stops the long one, whose checkpoint returns;
  `land`; visit 2 carries that checkpoint back and the long row resumes."""
  env_dir = box.build_env()
  prepared = kit("prepare", env={**os.environ, **data_env})
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  resume_dir = REPO / ".box" / "resume"
  shutil.rmtree(resume_dir, ignore_errors=True)
  try:
    results = tmp_path / "results"
    results.mkdir()
    first = rehearse_visit(env_dir, tmp_path / "visit1", results)
    assert [c["name"] for c in first["visit"]][0] == "first"
    assert json.loads((first["dir"].parent / "01-first" / "box.json").read_text())["jax"] == "0.11.2"
    pieces = first["json"]["pieces"]
    assert pieces["throughput"]["status"] == "done"
    assert pieces["tiny_cifar10"]["status"] == "recorded"
    assert pieces["tiny_cifar10_long"]["status"] == "stopped, returned"
    landed = kit("land", str(first["dir"]), "--results-dir", str(results), "--speeds",
                 str(tmp_path / "speeds.json"), "--readme", "")
    assert landed.returncode == 0, landed.stderr[-3000:]
    print(landed.stdout)
    record = json.loads((results / "tiny_cifar10_box_seed1.json").read_text())
    assert record["sweep"]["seeds"] == [0, 1] and "jax 0.11.2" in record["hardware"]
    assert record["tag"] == "box"
    assert (results / "weights" / "tiny_cifar10_box_seed1.safetensors").exists()
    assert (resume_dir / "tiny_cifar10_long").is_dir()
    second = rehearse_visit(env_dir, tmp_path / "visit2", results)
    assert any(c["name"] == "resume tiny_cifar10_long" for c in second["visit"])
    log = (second["dir"] / "main.log").read_text()
    assert "resumed tiny_cifar10_long from the last visit's checkpoint" in log
    assert "tiny_cifar10: recorded by an earlier visit; skipped" in log
    assert second["json"]["pieces"]["tiny_cifar10_long"]["resumed"] is True
  finally:
    shutil.rmtree(resume_dir, ignore_errors=True)


@pytest.mark.rehearsal
def test_the_speedrun_visit_passes_its_rehearsal(tmp_path, data_env):
  """`visit --queue speedrun` at CPU size on the emulated box: ours (`python -m
  cnn.speedrun`, 2 seeds, the breakdown and the kernel profile), then airbench's two scripts,
  here stand-ins (theirs need CUDA; tests/airbench_standin.py prints their
  table) staged as `prepare --airbench` stages a clone, with the cifar10/*.pt
  files the box would write (that needs torch; tested in test_box_airbench);
  `land` keeps the three in one file that benchmarks/record_speedrun.py renders."""
  from tools import box_airbench  # pylint: disable=import-outside-toplevel
  env_dir = box.build_env()
  prepared = kit("prepare", env={**os.environ, **data_env})
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  staged, kept = REPO / ".box" / "airbench", tmp_path / "staged-before"
  if staged.exists():
    shutil.move(staged, kept)
  try:
    clone = tmp_path / "clone"
    for path in box_airbench.SCRIPTS.values():
      (clone / path).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(REPO / "tests" / "airbench_standin.py", clone / path)
    box_airbench.stage(clone, staged)
    (staged / "cifar10").mkdir()
    for split in ("train", "test"):
      (staged / "cifar10" / f"{split}.pt").write_bytes(b"stand-in")
    results = tmp_path / "results"
    results.mkdir()
    visit = rehearse_visit(env_dir, tmp_path / "visit", results, queue="speedrun")
    main = next(c for c in visit["visit"] if c["name"] == "main")
    assert ".box/airbench" in main["carry"] and "--queue speedrun" in main["command"]
    pieces = visit["json"]["pieces"]
    assert set(pieces) == {"speedrun", *box_airbench.SCRIPTS}, pieces
    assert pieces["speedrun"]["status"] == "done" and pieces["speedrun"]["seeds"] == 2
    assert all(pieces[n]["status"] == "done" and pieces[n]["runs"] == 2
               for n in box_airbench.SCRIPTS), pieces
    bench = tmp_path / "bench"
    bench.mkdir()
    landed = kit("land", str(visit["dir"]), "--results-dir", str(results), "--speeds",
                 str(tmp_path / "speeds.json"), "--readme", "", "--bench-dir", str(bench))
    assert landed.returncode == 0, landed.stderr[-3000:]
    kept_file = next(bench.glob("record_speedrun_box_*.json"))
    side = json.loads(kept_file.read_text())
    assert side["ours"]["jax"] == "0.11.2" and side["ours"]["breakdown"]["seed"] == 2
    # the kernel profile works under the box's jax (here its CPU's trace)
    assert "error" not in side["ours"]["profile"] and side["ours"]["profile"]["top"]
    assert side["airbench94_muon"]["test_accuracy"]["n"] == 2
    table = subprocess.run([sys.executable, "benchmarks/record_speedrun.py", str(kept_file)],
                           cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert "| airbench94_muon (PyTorch) |" in table.stdout and "Ours takes" in table.stdout
  finally:
    shutil.rmtree(staged, ignore_errors=True)
    if kept.exists():
      shutil.move(kept, staged)
