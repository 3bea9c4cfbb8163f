"""docs/experiments.md's table of the speedrun at the record's level (issue #48).

  python benchmarks/record_speedrun.py benchmarks/results/record_speedrun_*.json \\
      --readme docs/experiments.md [--check]

Renders, from saved JSON files, one table per file: ours (`python -m
cnn.speedrun`) and, from a visit of the GPU box (`tools/accelerator_kit.py
land` writes record_speedrun_box_<date>.json), airbench94 and
airbench94_muon run beside it on the same GPU. A file written by `python -m
cnn.speedrun --out` alone (ours only, e.g. on this CPU) renders the same way.
Every number is the file's: n, the mean and spread of test accuracy (with
test-time augmentation, as each script evaluates) and of training seconds
(as each script times itself: compilation apart), the median, and ours
against airbench94_muon in mean seconds where both ran.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run import publish  # noqa: E402

BEGIN, END = "<!-- record-speedrun:begin -->", "<!-- record-speedrun:end -->"
THEIRS = {"airbench94": "`python airbench94.py` (legacy/)",
          "airbench94_muon": "`python airbench94_muon.py`"}
TARGET = 0.94


def side_by_side(result: dict) -> dict:
  """A box file as it is; ours alone (`python -m cnn.speedrun --out`) as one."""
  if "ours" in result or any(name in result for name in THEIRS):
    return result
  return {"date": result["date"], "device": result["device"], "host": result.get("host"),
          "ours": result}


def our_command(ours: dict) -> str:
  """The command that produced `ours`, from its recipe and sizes."""
  from cnn.speedrun.train import Recipe  # pylint: disable=import-outside-toplevel
  default, recipe = Recipe(), ours["recipe"]
  flags = [f"--seeds {ours['seeds_asked']}"]
  if ours["train_images"] != 50_000:
    flags.append(f"--train-images {ours['train_images']}")
  if ours["test_images"] != 10_000:
    flags.append(f"--test-images {ours['test_images']}")
  for key, flag in (("epochs", "--epochs"), ("batch_size", "--batch-size"), ("dtype", "--dtype")):
    if recipe[key] != getattr(default, key):
      flags.append(f"{flag} {recipe[key]}")
  if tuple(recipe["widths"]) != default.widths:
    flags.append("--widths " + ",".join(map(str, recipe["widths"])))
  return f"`python -m cnn.speedrun {' '.join(flags)}`"


def spread(summary: dict, scale: float, digits: int, unit: str = "") -> str:
  if summary["n"] < 2:
    return f"{scale * summary['mean']:.{digits}f}{unit} (n = 1)"
  return f"{scale * summary['mean']:.{digits}f} ± {scale * summary['std']:.{digits}f}{unit}"


def profile_line(profile: dict, top: int = 8) -> str:
  """`--profile`'s device time by program and its costliest operations, in words."""
  if "error" in profile:
    return f"The kernel profile could not be taken: {profile['error']}."
  short = lambda module: module.removeprefix("jit_").lstrip("_")  # noqa: E731 (jit__step: step)
  programs = ", ".join(f"{short(name)} {ms:.1f}" for name, ms in profile["modules"].items())
  ops = "; ".join(f"{o['op']} in {short(o['module'])} {o['ms']:.1f} ms "
                  f"({100 * o['share']:.1f} %, {o['calls']} calls"
                  + (f", `{o['kernel'][:60]}`" if o.get("kernel") and o["kernel"] != o["op"]
                     else "") + ")" for o in profile["top"][:top])
  return (f"Device time of one more run (seed {profile['seed']}, traced with jax.profiler, "
          f"{profile['where']}): {profile['device_ms']:.1f} ms; by program (ms): {programs}. "
          f"Its costliest operations: {ops}.")


def render(result: dict) -> str:
  result = side_by_side(result)
  ours = result.get("ours")
  versions = [f"jax {ours['jax']}"] + ([f"code {ours['code']}"] if ours.get("code") else []) \
      if ours else []
  where = result.get("device") or "the borrowed GPU box"
  if result.get("host"):
    where = f"{result['host']}" if where == "cpu" else f"{where} ({result['host']})"
  lines = [f"Measured {result['date']} on {where}" + (f", {', '.join(versions)}" if versions
                                                       else "") + ":", "",
           "| code | command | n | test accuracy (TTA) | mean >= 94 % | training s | median s "
           "| compile s |", "|---|---|---:|---:|---|---:|---:|---:|"]
  entries = []
  if ours:
    entries.append(("ours (JAX)", our_command(ours), ours, f"{ours['compile_seconds']:.1f}"))
  for name, command in THEIRS.items():
    if name in result:
      theirs = result[name]
      staged = theirs.get("staged", {}).get("commit", "")[:7]
      entries.append((f"{name} (PyTorch)", f"{command} at {staged}, unchanged, stopped after "
                      f"{theirs['runs_asked']} runs", theirs, "warm-up run, not timed"))
  for label, command, r, compile_s in entries:
    if not r.get("test_accuracy"):
      lines.append(f"| {label} | {command} | 0 | no run finished | | | | |")
      continue
    acc, sec = r["test_accuracy"], r["train_seconds"]
    lines.append(f"| {label} | {command} | {acc['n']} | {spread(acc, 100, 2, ' %')} | "
                 f"{'yes' if acc['mean'] >= TARGET else 'no'} | {spread(sec, 1, 3)} | "
                 f"{sec['median']:.3f} | {compile_s} |")
  if ours and ours.get("breakdown"):
    b = ours["breakdown"]
    lines += ["", f"Where ours spends a run (seed {b['seed']} once more, each phase waited for, "
              f"{b['total_s']:.3f} s): whitening fit {b['fit_s']:.3f} s, each epoch's data "
              f"{b['data_s']:.3f} s, steps {b['steps_s']:.3f} s ({b['step_ms']:.2f} ms a step; "
              f"dispatching them took the host {b['dispatch_s']:.3f} s), evaluation "
              f"{b['eval_s']:.3f} s."]
  if ours and ours.get("profile"):
    lines += ["", profile_line(ours["profile"])]
  muon = result.get("airbench94_muon", {}).get("train_seconds")
  if ours and muon:
    lines += ["", f"Ours takes {ours['train_seconds']['mean'] / muon['mean']:.2f}x "
              "airbench94_muon's mean training seconds on the same GPU."]
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("files", type=Path, nargs="+", help="saved JSON files, in table order")
  parser.add_argument("--readme", type=Path, help="rewrite its record-speedrun block")
  parser.add_argument("--check", action="store_true", help="fail if that block is out of date")
  args = parser.parse_args(argv)
  text = "\n".join(render(json.loads(f.read_text())) for f in args.files)
  return publish(text, args.readme, BEGIN, END, check=args.check, what="record speedrun",
                 fix=f"python benchmarks/record_speedrun.py {' '.join(map(str, args.files))} "
                     f"--readme {args.readme}")


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
