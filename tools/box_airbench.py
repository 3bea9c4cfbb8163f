"""airbench94 and airbench94_muon beside our speedrun on the GPU box (issue #48 item 3).

Their scripts (KellerJordan/cifar10-airbench, MIT) are carried for the run and
never committed, and run unchanged:

- `stage` (here): copies `legacy/airbench94.py` and `airbench94_muon.py` from
  a clone into .box/airbench/ (ignored by git) with the clone's commit and
  each file's SHA-256; `visit --queue speedrun` carries that folder.
- `write_data` (on the box): their loader reads `cifar10/train.pt` and
  `test.pt` when present and only downloads otherwise; we write exactly what
  it would have saved from torchvision's download (uint8 NHWC images in the
  files' order, int64 labels, the class names) from the carried original
  CIFAR-10 binaries, checksums verified. That is the only thing pointed at
  our data.
- `run_script` (on the box): starts a script in that folder, reads the table
  it prints as it goes, and stops it once N runs have printed their final
  row (airbench94_muon would go on to 200) or at a deadline. Each run's
  test-time-augmented accuracy and seconds are as the script itself timed
  them (CUDA events over training, the whitening fit and the final TTA
  evaluation); its warm-up run ("warmup", dummy labels) is left out.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script

from benchmarks import run as bench  # noqa: E402
from cnn.errors import UserError  # noqa: E402
from cnn.speedrun import summary  # noqa: E402

SCRIPTS = {"airbench94": "legacy/airbench94.py", "airbench94_muon": "airbench94_muon.py"}
UPSTREAM = "https://github.com/KellerJordan/cifar10-airbench"
MANIFEST = "manifest.json"


def stage(clone: Path, dest: Path) -> dict:
  """The scripts of the clone at `clone` into `dest`, with a manifest."""
  missing = [p for p in SCRIPTS.values() if not (clone / p).is_file()]
  if missing:
    raise UserError(f"{clone} has no {missing[0]}: pass --airbench a clone of {UPSTREAM}")
  commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown (not a git checkout)"
  shutil.rmtree(dest, ignore_errors=True)
  dest.mkdir(parents=True)
  files = {}
  for name, path in SCRIPTS.items():
    data = (clone / path).read_bytes()
    (dest / f"{name}.py").write_bytes(data)
    files[name] = {"upstream_path": path, "sha256": hashlib.sha256(data).hexdigest()}
  manifest = {"upstream": UPSTREAM, "commit": commit, "scripts": files}
  (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
  return manifest


def stage_from_git(git_dir: Path, dest: Path) -> dict:
  """The same from a bare snapshot (the tool library's `fetch`: a git directory
  without a work tree), read with `git show`."""
  tree = dest.parent / f".{dest.name}.tree"
  shutil.rmtree(tree, ignore_errors=True)
  for path in SCRIPTS.values():
    shown = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{path}"],
                           capture_output=True)
    if shown.returncode:
      raise UserError(f"{git_dir} has no {path} at HEAD: pass --airbench a clone of {UPSTREAM}")
    (tree / path).parent.mkdir(parents=True, exist_ok=True)
    (tree / path).write_bytes(shown.stdout)
  manifest = stage(tree, dest)
  manifest["commit"] = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"],
                                      capture_output=True, text=True).stdout.strip()
  (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
  shutil.rmtree(tree)
  return manifest


def stage_any(source: Path, dest: Path) -> dict:
  """`stage` from a clone, `stage_from_git` from a bare snapshot."""
  bare = not (source / ".git").exists() and (source / "HEAD").is_file()
  return (stage_from_git if bare else stage)(source, dest)


def torchvision_arrays(archive_dir: str) -> dict:
  """{"train"|"test": (images uint8 NHWC, labels int64)} in the order of the
  binary batch files (torchvision's `CIFAR10(...).data` and `.targets`), and
  the class names, from the original CIFAR-10 files (checksums verified)."""
  # pylint: disable=import-outside-toplevel
  import numpy as np
  from cnn.datasets import archives, find_archives, get_spec
  root = find_archives(get_spec("cifar10"), archive_dir)
  if root is None:
    raise UserError(f"no CIFAR-10 files in {archive_dir!r}: set CNN_ARCHIVE_DIR")
  splits = archives.read_cifar(root, "cifar10")
  return {"classes": archives.cifar_class_names(root, "cifar10"),
          **{k: (images, labels.astype(np.int64)) for k, (images, labels) in splits.items()}}


def write_data(archive_dir: str, folder: Path) -> None:
  """folder/cifar10/{train,test}.pt as airbench's loader saves them."""
  import torch  # pylint: disable=import-outside-toplevel
  arrays = torchvision_arrays(archive_dir)
  (folder / "cifar10").mkdir(parents=True, exist_ok=True)
  for split in ("train", "test"):
    images, labels = arrays[split]
    torch.save({"images": torch.tensor(images), "labels": torch.tensor(labels),
                "classes": arrays["classes"]}, folder / "cifar10" / f"{split}.pt")


def table_rows(text: str) -> list[dict]:
  """The rows of the table airbench prints (`|  run  |  epoch  | ... |`), as
  dicts by the header's column names."""
  header, rows = None, []
  for line in text.splitlines():
    if not (line.startswith("|") and line.rstrip().endswith("|")):
      continue
    cells = [c.strip() for c in line.strip()[1:-1].split("|")]
    if header is None and "epoch" in cells:
      header = cells
    elif header is not None and len(cells) == len(header):
      rows.append(dict(zip(header, cells)))
  return rows


def finished_runs(text: str) -> list[dict]:
  """One entry per run whose final row (epoch "eval") was printed: its label,
  TTA test accuracy and seconds; the warm-up run is left out."""
  runs, label = [], None
  for row in table_rows(text):
    label = row.get("run") or label
    if row.get("epoch") != "eval" or label == "warmup":
      continue
    seconds = next(v for k, v in row.items() if k.endswith("time_seconds"))
    runs.append({"run": label, "test_accuracy": float(row["tta_val_acc"]),
                 "train_seconds": float(seconds)})
  return runs


def run_script(name: str, folder: Path, runs: int, seconds: float, log: Path,
               python: str = sys.executable) -> dict:
  """Script `name` in `folder` until `runs` runs finished or `seconds` passed
  (then SIGTERM, SIGKILL 15 s later); what finished, summarised."""
  start = time.monotonic()
  log.parent.mkdir(parents=True, exist_ok=True)
  log.write_text("")
  read = lambda: log.read_text(errors="replace")  # noqa: E731
  code, _ = bench.supervise([python, "-u", f"{name}.py"], log, stop_at=start + seconds,
                            kill_at=start + seconds + 15, cwd=folder,
                            stop_when=lambda: len(finished_runs(read())) >= runs)
  done = finished_runs(read())[:runs]
  result = {"script": name, "exit_status": code, "wall_s": round(time.monotonic() - start, 1),
            "runs_asked": runs, "runs": done}
  if done:
    result["test_accuracy"] = summary([r["test_accuracy"] for r in done])
    result["train_seconds"] = summary([r["train_seconds"] for r in done])
  else:
    result["log_tail"] = read()[-3000:]
  return result


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="tools/box_airbench.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  s = sub.add_parser("stage", help="here: the scripts into .box/airbench/")
  s.add_argument("--airbench", required=True, type=Path,
                 help="a clone of cifar10-airbench, or a bare snapshot's git directory")
  s.add_argument("--dest", type=Path, default=ROOT / ".box" / "airbench")
  w = sub.add_parser("data", help="on the box: cifar10/{train,test}.pt for their loader")
  w.add_argument("--folder", type=Path, required=True)
  w.add_argument("--archive-dir", default=os.environ.get("CNN_ARCHIVE_DIR", ""))
  args = p.parse_args(argv)
  try:
    if args.command == "stage":
      manifest = stage_any(args.airbench, args.dest)
      print(f"{', '.join(SCRIPTS)} at {manifest['commit'][:12]} in {args.dest}")
    else:
      write_data(args.archive_dir, args.folder)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
