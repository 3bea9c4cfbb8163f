"""Side-by-side results of finished runs, from each workdir's `results.json`.

  python -m cnn.report.compare runs/resnet20_mnist runs/vgg16_mnist
  python -m cnn.report.compare runs/* --out results/comparison   # -> comparison.md, .csv
  python -m cnn.report.compare results/*_seed*.json               # the recorded runs
  python -m cnn.report.compare runs/sweep_a runs/sweep_b          # seed sweeps: Welch's t-test

Each argument is a workdir (its `results.json`, and `report/robustness.json` once
`--mode=evaluate` has run), a seed sweep's workdir (`sweep.json`: the mean over its
seeds, their standard deviation and count) or a record in `results/` (which carries both).
With two or more, a second table tests each against the first: the difference of
the mean test accuracies, Welch's t (unequal variances), its degrees of freedom and
the two-sided p-value, or why there is no p (fewer than 2 seeds on a side).

Prints the markdown table and writes it with a CSV of the raw numbers
(fractions, seconds) next to it: to `./comparison.{md,csv}` by default, into a
directory when `--out` is one, else to `<PREFIX>.md` and `<PREFIX>.csv`. Only
the standard library and etils.epath (workdirs may be gs:// URIs) are imported,
and scipy for the t-test of two or more, so it answers at once.
"""
import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from cnn import robustness
from cnn import workdir as workdirs
from cnn.errors import UserError

DEFAULT_NAME = "comparison"


def _percent(value: float) -> str:
  return f"{100 * value:.2f}"


def _seconds(value: float) -> str:
  minutes, seconds = divmod(round(value), 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{seconds:02d}s" if minutes else f"{value:.1f}s"


# (header, results.json key, markdown formatter); the CSV holds the raw value.
COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("model", "model", str),
    ("dataset", "dataset", str),
    ("epochs", "epochs", str),
    ("batch size", "batch_size", str),
    ("params", "num_params", lambda v: f"{v:,}"),
    ("train acc %", "train_accuracy", _percent),
    ("best val acc %", "best_val_accuracy", _percent),
    ("test acc %", "test_accuracy", _percent),
    ("± std", "test_accuracy_std", _percent),
    ("seeds", "seeds", str),
    ("wall time", "wall_time_s", _seconds),
    ("images/s", "images_per_s", lambda v: f"{v:,.0f}"),
)
MISSING = "—"


def columns() -> tuple[tuple[str, str, Callable[[Any], str]], ...]:
  """`COLUMNS`, then beyond accuracy (--mode=evaluate) each robustness section's
  (`ReportSection.compare_columns`: calibration on the whole test split,
  corruptions and attacks on the images the report states)."""
  return COLUMNS + tuple((c.header, c.key, c.format) for s in robustness.SECTIONS.values()
                         for c in s.compare_columns)


def robustness_headline(report: dict) -> dict:
  """The comparison's numbers from a robustness report (`cnn.robustness.evaluate`)."""
  return {c.key: c.value(report[s.name]) if report.get(s.name) else None
          for s in robustness.SECTIONS.values() for c in s.compare_columns}


def load_results(workdir: str) -> dict:
  """A workdir's results.json with its report's robustness, a sweep's summary
  (`load_sweep`), or a `results/` record. `seed_accuracies` lists the test
  accuracy of each seed it stands for."""
  if workdir.endswith(".json"):
    results = _read_json(workdirs.resolve(workdir))
    return {**results, **robustness_headline(results.get("robustness") or {}),
            "seeds": 1, "seed_accuracies": [results["test_accuracy"]]}
  if workdirs.Workdir.of(workdir).sweep.is_file():
    return load_sweep(workdir)
  path = workdirs.Workdir.of(workdir).results
  if not path.is_file():
    raise UserError(f"{path} not found: {workdir} is not a finished run; train it first "
                    f"(python main.py --config=... --workdir={workdir})")
  results = _read_json(path)
  report = workdirs.Workdir.of(workdir).report / "robustness.json"
  measured = _read_json(report) if report.is_file() else {}
  return {**results, **robustness_headline(measured), "seeds": 1,
          "seed_accuracies": [results["test_accuracy"]]}


def load_sweep(workdir: str) -> dict:
  """A seed sweep (cnn/sweep.py) as one row: its first seed's results for what
  the seeds share, the mean, standard deviation and count of their test
  accuracies, and the means of their train accuracy, wall time and speed."""
  sweep = _read_json(workdirs.Workdir.of(workdir).sweep)
  runs = [load_results(str(workdirs.Workdir.of(workdir).seed(s))) for s in sweep["seeds"]]
  mean = lambda key: (sum(r[key] for r in runs) / len(runs)
                      if all(r.get(key) is not None for r in runs) else None)
  acc = sweep["test_accuracy"]
  return {**runs[0], **{k: mean(k) for k in ("train_accuracy", "best_val_accuracy",
                                              "wall_time_s", "images_per_s")},
          "test_accuracy": acc["mean"], "test_accuracy_std": acc["std"], "seeds": acc["n"],
          "seed_accuracies": [r["test_accuracy"] for r in runs]}


def _read_json(path) -> dict:
  if not path.is_file():
    raise UserError(f"{path} not found; give a workdir or a results/*.json record")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e}); rerun the command that wrote it") from None


def markdown_row(workdir: str, results: dict) -> list[str]:
  return [workdir] + [MISSING if results.get(key) is None else fmt(results[key])
                      for _, key, fmt in columns()]


def markdown(workdirs: Sequence[str], results: Sequence[dict]) -> str:
  header = ["workdir"] + [name for name, _, _ in columns()]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
  lines += ["| " + " | ".join(markdown_row(w, r)) + " |" for w, r in zip(workdirs, results)]
  return "\n".join(lines) + "\n"


def significance(workdirs: Sequence[str], results: Sequence[dict]) -> str:
  """Each argument after the first against the first: Welch's t-test of their
  seeds' test accuracies (cnn/seeds.py), as a markdown table."""
  from cnn import seeds  # pylint: disable=import-outside-toplevel (scipy, only here)
  lines = ["| workdir | vs | Δ test acc % | Welch t | dof | p (two-sided) | verdict |",
           "|---|---|---:|---:|---:|---:|---|"]
  base = results[0]["seed_accuracies"]
  for workdir, result in zip(workdirs[1:], results[1:]):
    other = result["seed_accuracies"]
    test = seeds.welch(other, base)
    delta = 100 * (sum(other) / len(other) - sum(base) / len(base))
    if test["p"] is None:
      cells = [MISSING] * 3 + [f"cannot tell: {test['reason']}"]
    else:
      verdict = ("differ at the 5 % level" if test["p"] < 0.05
                 else "no difference shown at the 5 % level")
      cells = [f"{test['t']:.2f}", f"{test['dof']:.1f}", f"{test['p']:.3g}", verdict]
    lines.append(f"| {workdir} | {workdirs[0]} | {delta:+.2f} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def csv_text(workdirs: Sequence[str], results: Sequence[dict]) -> str:
  """Raw values (accuracies as fractions, times in seconds) for spreadsheets."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["workdir"] + [key for _, key, _ in columns()])
  for workdir, result in zip(workdirs, results):
    writer.writerow([workdir] + ["" if result.get(key) is None else result[key]
                                 for _, key, _ in columns()])
  return buffer.getvalue()


def output_paths(out: str | None) -> tuple[Path, Path]:
  """`--out` as a directory (existing, or ending in '/') or a file prefix."""
  prefix = Path(DEFAULT_NAME)
  if out:
    is_dir = out.endswith(("/", "\\")) or Path(out).is_dir()
    prefix = Path(out) / DEFAULT_NAME if is_dir else Path(out)
  return prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".csv")


def compare(workdirs: Sequence[str], out: str | None = None) -> str:
  """Writes the markdown and CSV tables; returns the markdown."""
  results = [load_results(w) for w in workdirs]
  md_path, csv_path = output_paths(out)
  table = markdown(workdirs, results)
  if len(results) > 1:
    table += "\n" + significance(workdirs, results)
  try:
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(table)
    csv_path.write_text(csv_text(workdirs, results))
  except OSError as e:
    raise UserError(f"cannot write {md_path} ({e.strerror}); choose another --out") from None
  return table


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cnn.report.compare", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", help="workdirs of finished runs")
  parser.add_argument("--out", default=None,
                      help="directory or file prefix for the .md and .csv tables "
                           f"(default: ./{DEFAULT_NAME})")
  args = parser.parse_args(argv)
  try:
    table = compare(args.workdirs, args.out)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  sys.stdout.write(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
