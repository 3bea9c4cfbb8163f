"""Batch-loss curves of one or more runs, finished or still training, from
their `steps.jsonl`: no model, no data, no evaluation, so it answers while a
run trains (e.g. the first epochs of a big model on a CPU).

  python -m cnn.report.curves runs/resnext29 --out runs/resnext29/loss_by_step.png
  python -m cnn.report.curves runs/a runs/b --label zero-init --label reference --out cmp.png
  python -m cnn.report.curves runs/resnext29 --every 5   # also every 5th window, for a note

Draws the batch loss by step (each window's mean, its min-max band, chance =
ln K dashed) and the learning rate by step, one colour per run, and prints a
markdown line per run: steps done, the step where the learning rate first
reached its peak (the warmup's end), the largest batch loss after it, and
whether every batch loss after it stayed below chance. K comes from the
dataset recorded in the run's newest checkpoint (`--classes` where there is
none yet).
"""
import argparse
import dataclasses
import math
import sys
from typing import Sequence

from matplotlib.figure import Figure

from cnn import checkpoint, datasets, metric_writers, settings
from cnn import workdir as workdirs
from cnn.errors import UserError
from cnn.report import plots

@dataclasses.dataclass(frozen=True)
class RunSteps:
  label: str
  steps: list[dict]  # the records of steps.jsonl, in step order
  num_classes: int


def dataset_of(workdir: str) -> str | None:
  """The dataset the newest checkpoint's config names (None: no checkpoint)."""
  steps = checkpoint.finalized_steps(workdir)
  if not steps:
    return None
  saved = checkpoint.read_for_reader(workdir, max(steps), meta=True)["meta"]["config"]
  return settings.upgrade(saved).data.name


def read_run(workdir: str, label: str, classes: int | None) -> RunSteps:
  path = workdirs.Workdir.of(workdir).steps
  if not path.is_file():
    raise UserError(f"no {path.name} in {workdir}: it is written from the first "
                    "log_every_steps steps on, by runs of this version")
  records = metric_writers.read_jsonl(path)
  if classes is None:
    dataset = dataset_of(workdir)
    if dataset is None:
      raise UserError(f"no checkpoint in {workdir} to read the dataset from; give the number "
                      "of classes, e.g. --classes 10")
    classes = datasets.get_spec(dataset).num_classes
  return RunSteps(label, records, classes)


def first_step_at(steps: Sequence[dict], learning_rate: float) -> int:
  """The first step whose learning rate reached `learning_rate` (to 1e-6)."""
  return next(r["step"] for r in steps if r["learning_rate"] >= learning_rate * (1 - 1e-6))


def stability(run: RunSteps) -> dict:
  """Steps done, the warmup's end (the learning rate's first peak) and the
  largest batch loss in the windows wholly after it, against chance ln K."""
  peak_rate = max(r["learning_rate"] for r in run.steps)
  peak = first_step_at(run.steps, peak_rate)
  after = [r for r in run.steps if r["step"] - r["steps"] >= peak]
  worst = max(after, key=lambda r: r["loss_max"]) if after else None
  chance = math.log(run.num_classes)
  return {"label": run.label, "steps": run.steps[-1]["step"], "peak_step": peak,
          "peak_learning_rate": peak_rate,
          "steps_after_peak": sum(r["steps"] for r in after),
          "max_loss_after_peak": worst and worst["loss_max"],
          "max_loss_step": worst and worst["step"], "chance": chance,
          "below_chance": None if worst is None else worst["loss_max"] < chance}


def summary_table(rows: Sequence[dict]) -> str:
  lines = ["| run | steps done | lr peak (step) | steps after it | largest batch loss after "
           "it (window ending at step) | chance ln K | below chance |",
           "|---|---:|---|---:|---|---:|---|"]
  for r in rows:
    worst = ("—" if r["max_loss_after_peak"] is None
             else f"{r['max_loss_after_peak']:.4f} ({r['max_loss_step']})")
    below = {None: "— (not past the peak yet)", True: "yes", False: "**no**"}[r["below_chance"]]
    lines.append(f"| {r['label']} | {r['steps']} | {r['peak_learning_rate']:g} "
                 f"({r['peak_step']}) | {r['steps_after_peak']} | {worst} | "
                 f"{r['chance']:.4f} | {below} |")
  return "\n".join(lines) + "\n"


def windows_table(run: RunSteps, every: int) -> str:
  """Every `every`-th window of a run (and its last), as markdown."""
  lines = [f"{run.label}:", "", "| step | learning rate | mean batch loss | min | max |",
           "|---:|---:|---:|---:|---:|"]
  chosen = run.steps[every - 1::every]
  if run.steps[-1] not in chosen:
    chosen.append(run.steps[-1])
  lines += [f"| {r['step']} | {r['learning_rate']:.4g} | {r['loss']:.4f} | "
            f"{r['loss_min']:.4f} | {r['loss_max']:.4f} |" for r in chosen]
  return "\n".join(lines) + "\n"


def figure(runs: Sequence[RunSteps]) -> Figure:
  fig = Figure(figsize=(14, 4.5))
  loss_ax, lr_ax = fig.subplots(1, 2)
  for i, run in enumerate(runs):
    colour = f"C{i}"
    plots.batch_loss_panel(loss_ax, run.steps, None, colour=colour, label=run.label)
    lr_ax.plot([r["step"] for r in run.steps], [r["learning_rate"] for r in run.steps],
               color=colour, label=run.label)
  for k in sorted({run.num_classes for run in runs}):
    loss_ax.axhline(math.log(k), color="gray", linestyle=":", label=f"chance: ln {k}")
  loss_ax.legend()
  lr_ax.set_title("learning rate by step")
  lr_ax.set_xlabel("step")
  lr_ax.grid(alpha=0.3)
  lr_ax.legend()
  fig.tight_layout()
  return fig


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m cnn.report.curves", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--label", action="append", default=[],
                      help="one per workdir, in order (default: the workdir)")
  parser.add_argument("--classes", type=int, help="K, where no checkpoint records the dataset")
  parser.add_argument("--out", help="the figure's path (.png); none: no figure")
  parser.add_argument("--every", type=int, default=0,
                      help="also print every N-th window of each run (0: no)")
  args = parser.parse_args(argv)
  try:
    if args.label and len(args.label) != len(args.workdirs):
      raise UserError(f"{len(args.label)} --label for {len(args.workdirs)} workdirs; give one "
                      "per workdir, or none")
    labels = args.label or args.workdirs
    runs = [read_run(w, label, args.classes) for w, label in zip(args.workdirs, labels)]
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary_table([stability(run) for run in runs]))
  if args.every > 0:
    for run in runs:
      print(windows_table(run, args.every))
  if args.out:
    plots.save(figure(runs), workdirs.resolve(args.out))
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
