"""Time-to-94%: configs/speedrun_cifar10.py trained as a user runs it.

  CNN_ARCHIVE_DIR=../shared/datasets python benchmarks/speedrun.py --seeds 0,1,2 \
      --out benchmarks/results/speedrun_gpu.json

Each seed is one `main.py` run in a fresh process. Per run it reports the
training seconds (from the end of the first, compiling step to the last step;
evaluation, data preparation and compilation are excluded, compile reported
apart), the test accuracy after the fixed schedule (EMA weights and flip TTA,
as the config says), and the time-to-94%: the training seconds of a run that
ends at >= 94% test accuracy, "not reached" otherwise. As in the speedrun
literature the schedule is fixed in advance and the test set is only read at
its end. Extra arguments after `--` are passed to main.py, e.g. a reduced CPU
run:

  python benchmarks/speedrun.py -- --config.num_epochs=2 \
      --config.schedule.warmup_epochs=0.4 --config.data.train_split=train[:4096] \
      --config.data.test_split=test[:2000]

`--render FILE... --readme docs/experiments.md` rewrites the speedrun block
of that file from saved JSON files (`--check`: fail if it is out of date).
"""
import argparse
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# As a package module, so that a caller importing both catches the same
# run_main exceptions this module raises.
from benchmarks.run import machine, publish, run_main  # noqa: E402
from cnn import settings  # noqa: E402

CONFIG = "configs/speedrun_cifar10.py"
BEGIN, END = "<!-- speedrun:begin -->", "<!-- speedrun:end -->"


def one_run(seed: int, overrides: list[str], target: float, workdir: Path | None = None,
            config: str = CONFIG, **deadlines) -> dict:
  """One seed in a fresh process, in a temporary workdir unless `workdir` is
  given (kept, so a run its budget stopped resumes); `deadlines`: run_main's stop_at/kill_at and log."""
  if workdir is None:
    with tempfile.TemporaryDirectory() as tmp:
      return one_run(seed, overrides, target, Path(tmp) / "w", config, **deadlines)
  results, wall, rss = run_main(config, [f"--config.seed={seed}", *overrides], workdir,
                                **deadlines)
  reached = results["test_accuracy"] >= target
  compile_s = results["compile_time_s"]  # None when the last process only evaluated
  return {"seed": seed, "test_accuracy": results["test_accuracy"],
          "train_time_s": round(results["train_time_s"], 2),
          "time_to_target_s": round(results["train_time_s"], 2) if reached else None,
          "compile_time_s": None if compile_s is None else round(compile_s, 2),
          "epochs": results["epochs"], "train_images_per_s": round(results["images_per_s"], 1),
          "process_wall_s": round(wall, 1), "peak_rss_mib": round(rss)}


def render(result: dict) -> str:
  target = f"{result['target']:.0%}"
  m = result["machine"]
  overrides = [settings.upgrade_override(f) for f in result["overrides"]]  # older records: flat
  where = (f"{m['cpu']} ({m['cores']} cores)" if m["backend"] == "cpu" else
           f"{len(m['devices'])}x {m['devices'][0]} ({m['cores']} host cores)")
  lines = [f"Measured {result['date']} on {where}, backend {m['backend']}: "
           f"`python benchmarks/speedrun.py"
           f"{' -- ' + ' '.join(overrides) if overrides else ''}`", "",
           f"| seed | test accuracy | training s | time to {target} | compile s | images/s |",
           "|---:|---:|---:|---:|---:|---:|"]
  for r in result["runs"]:
    reached = f"{r['time_to_target_s']:.1f} s" if r["time_to_target_s"] is not None else \
        "not reached"
    compile_s = "—" if r["compile_time_s"] is None else f"{r['compile_time_s']:.1f}"
    lines.append(f"| {r['seed']} | {100 * r['test_accuracy']:.2f}% | {r['train_time_s']:.1f} | "
                 f"{reached} | {compile_s} | {r['train_images_per_s']:.0f} |")
  runs = result["runs"]
  lines.append(f"| median | {100 * statistics.median(r['test_accuracy'] for r in runs):.2f}% | "
               f"{statistics.median(r['train_time_s'] for r in runs):.1f} | "
               f"{sum(r['time_to_target_s'] is not None for r in runs)}/{len(runs)} reached | | |")
  return "\n".join(lines) + "\n"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", default="0", help="comma-separated, one run each")
  parser.add_argument("--target", type=float, default=0.94)
  parser.add_argument("--out", type=Path, help="write the JSON here")
  parser.add_argument("--render", type=Path, nargs="+", help="only render these JSON files")
  parser.add_argument("--readme", type=Path, help="rewrite the speedrun block of this file "
                      "(docs/experiments.md)")
  parser.add_argument("--check", action="store_true", help="with --render and --readme: fail "
                      "if that block is out of date")
  parser.add_argument("overrides", nargs="*", help="main.py flags, after --")
  args = parser.parse_args()
  if args.render:
    return publish("\n".join(render(json.loads(f.read_text())) for f in args.render),
                   args.readme, BEGIN, END, check=args.check, what="speedrun",
                   fix=f"python benchmarks/speedrun.py --render "
                       f"{' '.join(map(str, args.render))} --readme {args.readme}")
  result = {"date": datetime.date.today().isoformat(), "machine": machine(),
            "target": args.target, "overrides": args.overrides,
            "runs": [one_run(int(s), args.overrides, args.target) for s in args.seeds.split(",")]}
  print(render(result))
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
