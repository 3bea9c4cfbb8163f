"""The README's experiment table, generated from the measured runs in results/.

  python -m cnn.report.results_table record runs/resnet20_mnist --name resnet20_mnist \
      --hardware "2-core CPU" --command "python main.py --config=configs/resnet20_mnist.py ..."
  python -m cnn.report.results_table render                    # print the table
  python -m cnn.report.results_table render --readme README.md # rewrite the README's tables
  python -m cnn.report.results_table render --figure he2016.png  # and He et al.'s figure

The README's tables: the experiments, He et al.'s (cnn/report/he2016.py), robustness.

Both take `--results-dir DIR` for another directory than the repository's results/.

`record` keeps the numbers of a finished workdir as
`results/<name>_seed<seed>.json` and its evaluation weights (the checkpoint
results.json reports) as `results/weights/<name>_seed<seed>.safetensors`,
with the file's size and SHA-256 in the JSON (`--no-weights`: numbers only); a
seed sweep's workdir (`config.sweep.seeds`) records each of its seeds. Weights
over the size git keeps (2 MiB: ResNet-20 and -32 fit, ResNet-56's 3.4 MB and
VGG-16's 61 MB do not) go to `--publish-dir DIR` instead, a directory outside
the repository (without it they are refused, nothing written), and the JSON
keeps their size and SHA-256 under `"weights_published"`: anyone holding a copy
checks it with
`predictor.load(path, sha256=...)`, and `tests/test_weights.py --published`
checks the copies in `$CNN_PUBLISHED_WEIGHTS`.
`render` shows each experiment as mean ± standard deviation (number of seeds)
with the 95 % Student-t interval of the mean. Rows without a results file say
so and why. `render` imports the standard library, etils.epath (for workdirs
that are URIs) and scipy (the t quantiles), `--figure` also matplotlib; `record`
also JAX, to read the checkpoint.
"""
import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Sequence

from cnn import robustness
from cnn import workdir as workdirs
from cnn.report import he2016
from cnn.report.compare import load_results
from cnn.errors import UserError

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"
WEIGHTS_DIR = "weights"  # under RESULTS_DIR
BEGIN, END = "<!-- results-table:begin -->", "<!-- results-table:end -->"
ROBUSTNESS_BEGIN, ROBUSTNESS_END = ("<!-- robustness-table:begin -->",
                                   "<!-- robustness-table:end -->")

# name -> (seed codebase %, published %, our target %, why not run yet). The CPU hours are
# estimates from main.py's own images/s on the 2-core Intel Xeon (AMX) that ran the queue until
# 2026-12-06 (each config trained alone, the median of steps 41-160's three 40-step windows:
# ResNet-56 v1 258, ResNet-56 v2 248, ResNet-110 v1 121, VGG-16 CIFAR 94, VGG-16 MNIST 127
# images/s), beside the 2-core AMD EPYC's fp32 train-step speeds (benchmarks/baseline_cpu.json,
# 2026-12-02: ResNet-56 v1 225, v2 201, ResNet-110 v1 102, VGG-16 116 images/s); the queue
# order is in results/README.md.
EXPERIMENTS = {
    "vgg16_mnist": ("98.98", "~99.6", "≥ 99.6",
                    "queued 4th: seeds 1 and 2, about 7 h of the 2-core Intel Xeon at 127 "
                    "images/s (seed 0 ran at 183 on the AMD EPYC), to tell whether its 4 "
                    "images under the target are the seed's"),
    "resnet20_mnist": ("99.0", "99.6 (pre-act ResNet-20)", "≥ 99.6", "~1 h of a 2-core CPU"),
    "vgg16_cifar10": ("86.49", "92.6-93.6", "≥ 93.5",
                      "queued 2nd: 200 epochs of 45k images, about 27 h of the 2-core Intel "
                      "Xeon at 94 images/s (22 h of the AMD EPYC at 116)"),
    "resnet20v1_cifar10": ("90.56", "91.25 (He), 91.73 (re-impl.)", "≥ 91.25",
                           "64k iterations (164 epochs): 11.1 h of the 2-core CPU"),
    "resnet20v1_cifar10_30ep": ("—", "— (30-epoch check)", "≥ 88",
                                "seeds 0-2 as one sweep on the 2-core Intel Xeon, about 34 min "
                                "a seed"),
    "resnet20v2_cifar10": ("90.98", "—", "≥ 91.7",
                           "64k iterations (164 epochs): 4.6 h of the 2-core AMD EPYC"),
    "resnet32v1_cifar10": ("—", "92.49 (He)", "≥ 92.5",
                           "for the GPU box's He et al. table (n ≥ 3 seeds); not on the CPU "
                           "queue"),
    "resnet44v1_cifar10": ("—", "92.83 (He)", "≥ 92.8",
                           "for the GPU box's He et al. table (n ≥ 3 seeds); not on the CPU "
                           "queue"),
    "resnet56v1_cifar10": ("85.37", "93.03 (He), 93.39 (re-impl.)", "≥ 93.3",
                           "64k iterations (164 epochs): 12.1 h of the 2-core AMD EPYC, "
                           "resumed four times"),
    "resnet56v2_cifar10": ("87.51", "93.0", "≥ 93.5",
                           "in progress, 1st of the CPU queue: restarted from epoch 0 "
                           "2026-12-07 23:55 UTC at 8913c07 on a new 2-core AMD EPYC (the first "
                           "run's machine was replaced at epoch 95); epoch 44 of 164 at "
                           "2026-12-08 02:20 UTC, about 6.5 h left alone at 291 images/s; first "
                           "for the GPU box"),
    "resnet110v1_cifar10": ("—", "93.57 (He)", "≥ 93.8",
                            "queued 3rd: 64k iterations, about 19 h of the 2-core Intel Xeon "
                            "at 121 images/s (22 h of the AMD EPYC at 102)"),
    "resnet110v2_cifar10": ("—", "93.63 (He, pre-act.)", "≥ 93.8",
                            "after the queue: about 19 h at ResNet-110 v1's speed"),
    "resnet164v2_cifar10": ("—", "94.54 (He, pre-act.)", "≥ 94.5",
                            "for the GPU box's He et al. table (n ≥ 3 seeds); not on the CPU "
                            "queue"),
}
KEPT = ("protocol", "test_accuracy", "test_loss", "best_val_accuracy", "best_epoch",
        "last_test_accuracy", "train_accuracy", "epochs", "batch_size", "num_params",
        "wall_time_s", "images_per_s", "devices", "seed", "model", "dataset", "config")


def record(workdir: str, name: str, hardware: str, command: str,
           results_dir: Path = RESULTS_DIR, commit: str | None = None,
           resumes: int | None = None, weights: bool = True,
           publish_dir: Path | None = None, tag: str | None = None,
           git_limit_bytes: int | None = None) -> list[Path]:
  """Copies a finished run's numbers into `results_dir`, with the commit the
  run was pinned to and how many times it was resumed, when given, and its
  evaluation weights (`weights`). A seed sweep's workdir records each of its
  seeds (`<name>_seed<s>.json`, replacing earlier records of those seeds) and
  notes the sweep in each. Weights files over `git_limit_bytes` (default
  weights.GIT_SIZE_LIMIT_BYTES) go to `publish_dir` (outside git) instead of
  results/weights/, and are refused without it. `tag` (e.g. "box") keeps
  these records apart from other runs of the same config and seeds
  (`<name>_<tag>_seed<s>.json`): the table shows each sample on its own."""
  if weights and publish_dir is not None \
      and Path(publish_dir).resolve().is_relative_to(RESULTS_DIR.parent):
    raise UserError(f"--publish-dir {publish_dir} is inside the repository; give a directory "
                    "outside it (the weights there are not kept in git)")
  sweep_file = workdirs.Workdir.of(workdir).sweep
  if not sweep_file.is_file():
    return [record_run(workdir, name, hardware, command, results_dir, commit, resumes, weights,
                       publish_dir, tag=tag, git_limit_bytes=git_limit_bytes)]
  sweep = json.loads(sweep_file.read_text())
  note = {"seeds": sweep["seeds"], "placement": sweep["placement"], "mesh": sweep["mesh"]}
  return [record_run(str(workdirs.Workdir.of(workdir).seed(s)), name, hardware, command,
                     results_dir, commit, resumes, weights, publish_dir, sweep=note, tag=tag,
                     git_limit_bytes=git_limit_bytes)
          for s in sweep["seeds"]]


def record_run(workdir: str, name: str, hardware: str, command: str, results_dir: Path,
               commit: str | None, resumes: int | None, weights: bool,
               publish_dir: Path | None = None, sweep: dict | None = None,
               tag: str | None = None, git_limit_bytes: int | None = None) -> Path:
  """`record` of one run (one seed)."""
  results = load_results(workdir)
  entry = {"name": name, "hardware": hardware, "command": command,
           **({"commit": commit} if commit else {}),
           **({"resumes": resumes} if resumes is not None else {}),
           **({"sweep": sweep} if sweep else {}),
           **({"tag": tag} if tag else {}),
           **{k: results.get(k) for k in KEPT}}
  robustness = workdirs.Workdir.of(workdir).report / "robustness.json"
  if robustness.is_file():  # --mode=evaluate ran: calibration, corruptions, attacks
    entry["robustness"] = json.loads(robustness.read_text())
  stem = f"{name}_{tag}_seed{results['seed']}" if tag else f"{name}_seed{results['seed']}"
  if weights:
    key, shipped = ship_weights(workdir, results_dir, publish_dir, f"{stem}.safetensors", name,
                                results, git_limit_bytes)
    entry[key] = shipped
  results_dir.mkdir(parents=True, exist_ok=True)
  path = results_dir / f"{stem}.json"
  path.write_text(json.dumps(entry, indent=2) + "\n")
  return path


def ship_weights(workdir: str, results_dir: Path, publish_dir: Path | None, file_name: str,
                 name: str, results: dict, git_limit_bytes: int | None) -> tuple[str, dict]:
  """Writes the evaluation weights of the checkpoint results.json reports to
  results_dir/weights/, or, over `git_limit_bytes`, to `publish_dir`; refuses
  (nothing written) when they are too large for git and there is no
  `publish_dir`. Returns the entry's key ("weights" or "weights_published")
  and what it keeps: the file, its size and SHA-256, the step and epoch."""
  from cnn.inference import predictor, weights  # pylint: disable=import-outside-toplevel
  p = predictor.load(workdir, "best")
  if git_limit_bytes is None:
    git_limit_bytes = weights.GIT_SIZE_LIMIT_BYTES
  path = results_dir / WEIGHTS_DIR / file_name
  written = weights.save(p, path, {"name": name, "test_accuracy": results.get("test_accuracy")})
  kept = {**written, "step": p.source["step"], "epoch": p.source["epoch"]}
  if written["bytes"] <= git_limit_bytes:
    return "weights", {"file": f"{WEIGHTS_DIR}/{file_name}", **kept}
  if publish_dir is not None:
    Path(publish_dir).mkdir(parents=True, exist_ok=True)
    shutil.move(path, Path(publish_dir) / file_name)
  else:
    path.unlink()
  if not any(path.parent.iterdir()):
    path.parent.rmdir()
  if publish_dir is None:
    raise UserError(f"the weights of {workdir} take {written['bytes'] / 2**20:.1f} MiB, over the "
                    f"{git_limit_bytes / 2**20:.0f} MiB kept in git; record with "
                    "--publish-dir DIR (a directory outside the repository) or --no-weights")
  return "weights_published", {"file": file_name, **kept}


def load_all(results_dir: Path = RESULTS_DIR) -> dict[str, list[dict]]:
  runs: dict[str, list[dict]] = {}
  for path in sorted(results_dir.glob("*.json")):
    entry = json.loads(path.read_text())
    runs.setdefault(entry["name"], []).append(entry)
  return runs


def ours(entries: list[dict]) -> tuple[str, str]:
  """Mean ± sample std (n) of the test accuracy (%) over the seeds, and the
  95 % Student-t interval of the mean (cnn/seeds.py; none for one seed)."""
  accuracies = [100 * e["test_accuracy"] for e in entries]
  if len(accuracies) == 1:
    return f"{accuracies[0]:.2f} (1)", "— (one seed)"
  from cnn import seeds  # pylint: disable=import-outside-toplevel (scipy's t quantiles)
  s = seeds.summary(accuracies)
  low, high = s["interval"]
  return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['n']})", f"{low:.2f}-{high:.2f}"


def protocol(entry: dict) -> str:
  """How the row's test accuracy was chosen; runs recorded before protocols
  existed all selected by validation."""
  return entry.get("protocol") or (entry.get("config") or {}).get("protocol") or "validation"


def weights_cell(entries: list[dict]) -> str:
  """Links to the shipped weights files (one per seed), or why there are none."""
  links = [f"[seed {e['seed']}, {e['weights']['bytes'] / 1e6:.1f} MB](results/"
           f"{e['weights']['file']})" for e in entries if e.get("weights")]
  links += [f"seed {e['seed']}, {e['weights_published']['bytes'] / 1e6:.1f} MB, outside git "
            f"(SHA-256 {e['weights_published']['sha256'][:12]}…)"
            for e in entries if e.get("weights_published")]
  return ", ".join(links) or f"— ({entries[0].get('weights_missing', 'not shipped')})"


def samples(entries: list[dict]) -> list[tuple[str, list[dict]]]:
  """A config's runs under one protocol as its samples: the runs recorded with
  a tag (e.g. "box": one seed sweep on the GPU box) apart from the untagged
  ones (the CPU's long runs), largest first (a tie goes to the tagged one)."""
  groups: dict[str, list[dict]] = {}
  for e in entries:
    groups.setdefault(e.get("tag") or "", []).append(e)
  return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0] == ""))


def beside(main: list[dict], other: list[dict]) -> str:
  """Where another sample of the same config and protocol lies against the
  row's 95 % interval (or its one value): "the CPU run (91.33, seed 0) lies
  inside it", or for several runs "the CPU runs (mean 91.40 of 2): 1 of 2
  inside it"."""
  accuracies = [100 * e["test_accuracy"] for e in other]
  n = len(accuracies)
  where = f"the {other[0].get('tag') or 'CPU'} run{'s' if n > 1 else ''}"
  value = (f"{accuracies[0]:.2f}, seed {other[0]['seed']}" if n == 1 else
           f"mean {statistics.mean(accuracies):.2f} of {n}")
  if len(main) < 2:
    return f"{where} ({value}) beside it"
  from cnn import seeds  # pylint: disable=import-outside-toplevel (scipy's t quantiles)
  low, high = seeds.summary([100 * e["test_accuracy"] for e in main])["interval"]
  inside = sum(low <= a <= high for a in accuracies)
  if n == 1:
    return f"{where} ({value}) lies {'inside' if inside else 'outside'} it"
  return f"{where} ({value}): {inside} of {n} inside it"


def render(results_dir: Path = RESULTS_DIR) -> str:
  """One row per config and protocol; a config measured both on the box (a
  tagged sweep) and on the CPU shows the larger sample and where the other
  lies against its interval."""
  runs = load_all(results_dir)
  lines = ["| config | seed codebase | published | target | ours (test %, mean ± std (seeds)) "
           "| 95 % interval | protocol | epochs | measured on, wall time | weights |",
           "|---|---:|---|---|---|---|---|---:|---|---|"]
  for name in list(EXPERIMENTS) + sorted(set(runs) - set(EXPERIMENTS)):
    seed, published, target, why = EXPERIMENTS.get(name, ("—", "—", "—", ""))
    if not runs.get(name):
      lines.append(f"| `{name}` | {seed} | {published} | {target} | no result yet ({why}) "
                   "| | | | | |")
      continue
    by_protocol: dict[str, list[dict]] = {}
    for e in runs[name]:
      by_protocol.setdefault(protocol(e), []).append(e)
    for kind in sorted(by_protocol, key=lambda k: (k != "paper", k)):
      (_, entries), *others = samples(by_protocol[kind])
      hours = statistics.mean(e["wall_time_s"] for e in entries) / 3600
      mean_std, interval = ours(entries)
      interval = "; ".join([interval, *(beside(entries, o) for _, o in others)])
      lines.append(
          f"| `{name}` | {seed} | {published} | {target} | {mean_std} | {interval} | "
          f"{kind} | {entries[0]['epochs']} | "
          f"{entries[0]['hardware']}, {hours:.2f} h | {weights_cell(entries)} |")
  return "\n".join(lines) + "\n"


def _pct(value) -> str:
  return "—" if value is None else f"{100 * value:.2f}"


def robustness_row(path: str, entry: dict) -> str:
  """The run, each robustness section's cells (`ReportSection.results_columns`)
  and the evaluation's time."""
  rob = entry["robustness"]
  cells = [cell(rob.get(section.name)) for section in robustness.SECTIONS.values()
           for _, cell, _ in section.results_columns]
  seconds = sum((rob.get("seconds") or {}).values())
  when = f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
  if when == "0 s":  # calibration on the report's own logits takes milliseconds
    when = "< 1 s"
  return " | ".join([f"| [{entry['name']} seed {entry.get('seed', 0)}]({path})", *cells,
                     f"{when} |"])


def render_robustness(results_dir: Path = RESULTS_DIR) -> str:
  """Calibration and robustness of every recorded run that has them: one column
  per cell a section declares."""
  columns = [(header, number) for section in robustness.SECTIONS.values()
             for header, _, number in section.results_columns]
  lines = ["| " + " | ".join(["run", *(h for h, _ in columns), "evaluation time"]) + " |",
           "|---|" + "".join("---:|" if number else "---|" for _, number in columns) + "---:|"]
  for path in sorted(results_dir.glob("*.json")):
    entry = json.loads(path.read_text())
    if entry.get("robustness"):
      lines.append(robustness_row(f"{results_dir.name}/{path.name}", entry))
  return "\n".join(lines) + "\n"


def paper_samples(results_dir: Path = RESULTS_DIR) -> dict[str, list[dict]]:
  """Each config's paper-protocol runs: its largest sample, as the results table shows it."""
  chosen = {}
  for name, entries in load_all(results_dir).items():
    paper = [e for e in entries if protocol(e) == "paper"]
    if paper:
      chosen[name] = samples(paper)[0][1]
  return chosen


def render_he2016(results_dir: Path = RESULTS_DIR) -> str:
  """He et al.'s table (cnn/report/he2016.py) with each config's paper-protocol runs."""
  return he2016.render(paper_samples(results_dir))


def write_he2016_figure(path: str, results_dir: Path = RESULTS_DIR) -> None:
  """He et al.'s comparison against depth (`he2016.figure`) as a PNG file."""
  from cnn.report import plots  # pylint: disable=import-outside-toplevel (matplotlib)
  figure = he2016.figure(paper_samples(results_dir))
  target = workdirs.resolve(path)
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    plots.save(figure, target)
  except OSError as e:
    raise UserError(f"cannot write {path} ({e.strerror or e}); choose another --figure") from None


def rewrite_tables(readme: Path, results_dir: Path = RESULTS_DIR) -> str:
  """Every table of `readme` made from results/ (experiments, He et al.'s,
  robustness), rewritten; returns them as printed."""
  tables = [(render(results_dir), BEGIN, END), (render_he2016(results_dir), he2016.BEGIN,
                                                 he2016.END),
            (render_robustness(results_dir), ROBUSTNESS_BEGIN, ROBUSTNESS_END)]
  for table, begin, end in tables:
    rewrite_readme(readme, table, begin, end)
  return "\n".join(t for t, _, _ in tables)


def rewrite_readme(readme: Path, table: str, begin: str = BEGIN, end: str = END) -> None:
  """Replaces what lies between the `begin` and `end` markers with `table`."""
  if not readme.is_file():
    raise UserError(f"{readme} not found; give the README whose tables to rewrite, e.g. "
                    "--readme README.md")
  text = readme.read_text()
  if begin not in text or end not in text:
    raise UserError(f"{readme} has no {begin} ... {end} block for the table")
  head, rest = text.split(begin, 1)
  readme.write_text(head + begin + "\n" + table + end + rest.split(end, 1)[1])


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cnn.report.results_table", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="action", required=True)
  add = commands.add_parser("record", help="keep a finished workdir's numbers in results/")
  add.add_argument("workdir")
  add.add_argument("--name", required=True, help="experiment name, e.g. resnet20_mnist")
  add.add_argument("--hardware", required=True, help='e.g. "2-core CPU" or "1x H100"')
  add.add_argument("--command", required=True, help="the exact training command")
  add.add_argument("--commit", default=None, help="the commit the run was pinned to")
  add.add_argument("--tag", default=None,
                   help="keep these records apart from other runs of the config (e.g. box: "
                   "results/<name>_box_seed<s>.json); the table shows each sample")
  add.add_argument("--resumes", type=int, default=None, help="times the run was resumed")
  add.add_argument("--no-weights", dest="weights", action="store_false",
                   help="numbers only: do not ship the evaluation weights")
  add.add_argument("--publish-dir", type=Path, default=None,
                   help="where weights over the 2 MiB git keeps go (outside git; their size "
                        "and SHA-256 stay in the JSON); smaller ones stay in results/weights/")
  show = commands.add_parser("render", help="print the table (and rewrite a README's)")
  show.add_argument("--readme", default=None)
  show.add_argument("--figure", default=None,
                    help="also draw He et al.'s comparison against depth into this .png file")
  for command in (add, show):
    command.add_argument("--results-dir", type=Path, default=None,
                         help="where the results files are (default: the repository's results/)")
  args = parser.parse_args(argv)
  results_dir = args.results_dir or RESULTS_DIR
  try:
    if args.action == "record":
      for path in record(args.workdir, args.name, args.hardware, args.command, results_dir,
                         args.commit, args.resumes, args.weights, args.publish_dir, args.tag):
        print(path)
    else:
      if args.figure and not args.figure.lower().endswith(".png"):
        raise UserError(f"--figure={args.figure}: the figure is written as PNG; give a path "
                        "ending in .png")
      if args.readme:
        sys.stdout.write(rewrite_tables(Path(args.readme), results_dir))
      else:
        sys.stdout.write("\n".join([render(results_dir), render_he2016(results_dir),
                                    render_robustness(results_dir)]))
      if args.figure:
        write_he2016_figure(args.figure, results_dir)
        print(f"wrote {args.figure}")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
