"""Where a train step's time goes, per layer and per kind of op, JAX next to
PyTorch: the profile behind benchmarks/README.md's "where the time goes".

  pip install -r requirements-bench.txt
  python benchmarks/profile_step.py --model resnet20 --out benchmarks/results/profile_resnet20.json \
      --readme benchmarks/README.md

JAX: the real train step of benchmarks/run.py (batch 128, fp32) is traced with
`jax.profiler` (XLA:CPU's per-op trace events, `--xla_cpu_enable_xprof_traceme`);
each executed HLO op is mapped through the compiled HLO's metadata to the
JAX source op and module path that made it (e.g.
`transpose(jvp(CifarResNet))/stage1_block1/Conv_0/conv_general_dilated`:
the backward pass of that layer's convolution). PyTorch: the twin of
benchmarks/torch_twins.py under `torch.profiler`, its aten ops grouped the
same way. Times are per step, summed over threads' op events (on 2 cores a
step's ops mostly run one at a time, each using both threads), medians over
`--steps` profiled steps being impractical, so the sum over them divided.
"""
import argparse
import collections
import datetime
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MARKERS = "<!-- profile-{}:begin -->", "<!-- profile-{}:end -->"  # one block per model
MODELS = {"resnet20": "resnet20_v1", "resnet56": "resnet56_v1", "vgg16": "vgg16"}
CATEGORIES = ("convolution", "batchnorm", "elementwise and pooling", "layout copies",
              "loss and classifier", "optimizer", "other")


def jax_category(op_name: str | None, hlo_name: str) -> tuple[str, str, str]:
  """(category, direction, layer) of one HLO op from its source op_name."""
  if hlo_name.startswith("transpose_copy"):  # inputs of XLA's kernel gradients, laid out
    return "layout copies", "backward", "-"   # batch-last (recomputing what made them)
  if not op_name:
    kind = "layout copies" if "transpose" in hlo_name or "copy" in hlo_name else "other"
    return kind, "backward" if kind == "layout copies" else "-", "-"
  direction = "backward" if "transpose(" in op_name else "forward"
  parts = op_name.split("/")
  model_at = next((i for i, p in enumerate(parts) if "jvp(" in p), None)
  if model_at is None:
    return "optimizer", "-", "-"
  path = parts[model_at + 1:-1]
  module = [i for i, p in enumerate(path) if "Conv" in p or p.endswith("conv")]
  layer = "/".join(path[:module[-1] + 1] if module else path) or "-"
  if any("Conv" in p or p.endswith("conv") for p in path) or op_name == UNATTRIBUTED_CONV:
    return "convolution", direction, layer
  if any("BatchNorm" in p or p.endswith("bn") for p in path):
    return "batchnorm", direction, layer
  if any("Dense" in p for p in path):
    return "loss and classifier", direction, layer
  return "elementwise and pooling", direction, layer


# XLA:CPU drops the metadata of the kernel-gradient convolutions it rewrites
# (batch as the feature dimension): they are attributed to no layer.
UNATTRIBUTED_CONV = "transpose(jvp(model))/kernel gradients (layer not recorded by XLA)/conv_general_dilated"


def hlo_op_names(hlo: str) -> dict[str, str | None]:
  """Instruction name -> the JAX source op_name of its metadata. A fusion
  without metadata of its own takes its called computation's (the op that
  dominates a fusion: a convolution or dot if it has one, else the first)."""
  op_names, calls, computations, current = {}, {}, collections.defaultdict(list), None
  for line in hlo.splitlines():
    if m := re.match(r"\s*(?:ENTRY )?%?([\w.-]+) .*\{\s*$", line):
      current = m.group(1)
    m = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = ", line)
    if not m:
      continue
    found = re.search(r'op_name="([^"]*)"', line)
    op_names[m.group(1)] = found.group(1) if found else None
    heavy = re.search(r"\b(convolution|dot)\(", line) is not None
    if found:
      computations[current].append((not heavy, found.group(1)))
    elif heavy and " convolution(" in line:
      computations[current].append((False, UNATTRIBUTED_CONV))
    if called := re.search(r"calls=%?([\w.-]+)", line):
      calls[m.group(1)] = called.group(1)
  for name, computation in calls.items():
    if op_names.get(name) is None and computations.get(computation):
      op_names[name] = min(computations[computation])[1]
  return op_names


def profile_jax(model: str, batch: int, steps: int, layer_options: dict,
                dtype: str = "float32") -> dict:
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_enable_xprof_traceme=true".strip()
  import jax  # pylint: disable=import-outside-toplevel
  from benchmarks.run import JaxStepper  # pylint: disable=import-outside-toplevel
  stepper = JaxStepper(MODELS[model], dtype, batch, layer_options)
  hlo = stepper._step.lower(stepper.state, stepper.sums, stepper.batch).compile().as_text()  # pylint: disable=protected-access
  op_names = hlo_op_names(hlo)
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    start = time.perf_counter()
    stepper.run(steps)
    wall = (time.perf_counter() - start) / steps
    jax.profiler.stop_trace()
    trace = next(Path(tmp).rglob("*.trace.json.gz"))
    events = json.load(gzip.open(trace))
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e["name"] in op_names:
      per_op[e["name"]] += e["dur"] / 1e3 / steps  # ms per step
  return {"wall_ms": wall * 1e3, "ops": [
      {"hlo": name, "op_name": op_names[name], "ms": ms,
       **dict(zip(("category", "direction", "layer"), jax_category(op_names[name], name)))}
      for name, ms in per_op.most_common()]}


def torch_category(name: str) -> tuple[str, str]:
  backward = "backward" in name.lower() or name.startswith("autograd::")
  direction = "backward" if backward else "forward"
  n = name.lower()
  if "conv" in n:
    return "convolution", direction
  if "batch_norm" in n:
    return "batchnorm", direction
  if "foreach" in n or "sgd" in n or "optimizer" in n or "zero_" in n:
    return "optimizer", "-"
  if any(k in n for k in ("linear", "addmm", "mm", "cross_entropy", "log_softmax", "nll")):
    return "loss and classifier", direction
  if any(k in n for k in ("relu", "threshold", "add", "mean", "max_pool", "dropout", "mul",
                          "div", "sum", "fill", "pool")):
    return "elementwise and pooling", direction
  if any(k in n for k in ("copy", "contiguous", "clone", "to", "transpose", "permute")):
    return "layout copies", direction
  return "other", direction


def profile_torch(model: str, batch: int, steps: int, dtype: str = "float32") -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  from torch.profiler import ProfilerActivity, profile  # pylint: disable=import-outside-toplevel
  from benchmarks.torch_twins import Stepper  # pylint: disable=import-outside-toplevel
  stepper = Stepper(model, batch, dtype)  # bfloat16: under torch.autocast
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    for _ in range(steps):
      stepper.step()
    wall = (time.perf_counter() - start) / steps
  ops = []
  # Self time: each aten op's own time, so nested calls are not counted twice.
  for avg in prof.key_averages():
    if avg.self_cpu_time_total <= 0 or avg.key.startswith("ProfilerStep"):
      continue
    category, direction = torch_category(avg.key)
    ops.append({"op": avg.key, "ms": avg.self_cpu_time_total / 1e3 / steps,
                "category": category, "direction": direction})
  return {"wall_ms": wall * 1e3, "ops": sorted(ops, key=lambda o: -o["ms"])}


def summarise(ops: list[dict]) -> dict[str, dict[str, float]]:
  out = {c: {"forward": 0.0, "backward": 0.0, "-": 0.0} for c in CATEGORIES}
  for o in ops:
    out[o["category"]][o["direction"]] += o["ms"]
  return out


def render(result: dict) -> str:
  for o in result["jax"]["ops"]:  # classify with this version's rules
    o.update(zip(("category", "direction", "layer"), jax_category(o["op_name"], o["hlo"])))
  jx, pt = summarise(result["jax"]["ops"]), summarise(result["torch"]["ops"])
  m = result["machine"]
  dtype = {"float32": "fp32", "bfloat16": "bf16 compute (PyTorch: bf16 autocast)"}[
      result.get("dtype", "float32")]
  out = [f"{result['model']} train step, batch {result['batch']}, {dtype}, measured "
         f"{result['date']} on {m['cpu']} ({m['cores']} cores), jax {m['jax']}, torch "
         f"{m['torch']}; ms per step from the profilers' op events, {result['steps']} steps. "
         f"Wall time per step while profiled: JAX {result['jax']['wall_ms']:.0f} ms, "
         f"PyTorch {result['torch']['wall_ms']:.0f} ms.", "",
         "| kind of op | JAX forward | JAX backward | PyTorch forward | PyTorch backward | "
         "JAX - PyTorch |", "|---|---:|---:|---:|---:|---:|"]
  for c in CATEGORIES:
    j, p = jx[c], pt[c]
    jt, ptt = sum(j.values()), sum(p.values())
    if jt < 0.05 and ptt < 0.05:
      continue
    fwd_j = j["forward"] + (j["-"] if c == "optimizer" else 0)
    fwd_p = p["forward"] + (p["-"] if c == "optimizer" else 0)
    out.append(f"| {c} | {fwd_j:.1f} | {j['backward']:.1f} | {fwd_p:.1f} | "
               f"{p['backward']:.1f} | {jt - ptt:+.1f} |")
  jt = sum(sum(v.values()) for v in jx.values())
  ptt = sum(sum(v.values()) for v in pt.values())
  out.append(f"| **all ops** | | {jt:.1f} | | {ptt:.1f} | {jt - ptt:+.1f} |")
  layers = collections.defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
  for o in result["jax"]["ops"]:
    if o["category"] == "convolution":
      layers[o["layer"]][o["direction"]] += o["ms"]
  out += ["", "JAX convolutions per layer (ms per step, forward / backward = input and "
          "kernel gradient, including the layer's im2col/taps ops where the rule picks them). "
          "XLA:CPU runs some convolutions asynchronously: their time then lands in the next "
          "op that waits for them (stage 1's BatchNorm here), so per-layer numbers are "
          "indicative, and the kinds of op above understate convolutions somewhat:",
          "", "| layer | forward | backward |", "|---|---:|---:|"]
  for layer, t in sorted(layers.items(), key=lambda kv: -sum(kv[1].values())):
    out.append(f"| {layer} | {t['forward']:.1f} | {t['backward']:.1f} |")
  return "\n".join(out) + "\n"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet20", choices=sorted(MODELS))
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--out", type=Path)
  parser.add_argument("--readme", type=Path)
  parser.add_argument("--render", type=Path, help="only render this JSON (with --readme)")
  args = parser.parse_args()
  from cnn import backend  # pylint: disable=import-outside-toplevel
  from cnn.report import results_table  # pylint: disable=import-outside-toplevel
  backend.retain_host_memory()  # as main.py does, before JAX starts (cnn/backend.py)
  if args.render:
    result = json.loads(args.render.read_text())
  else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.run import machine  # pylint: disable=import-outside-toplevel
    result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
              "machine": machine(), "model": args.model, "batch": args.batch,
              "steps": args.steps, "dtype": args.dtype,
              "jax": profile_jax(args.model, args.batch, args.steps, {}, args.dtype),
              "torch": profile_torch(args.model, args.batch, args.steps, args.dtype)}
    if args.out:
      args.out.parent.mkdir(parents=True, exist_ok=True)
      args.out.write_text(json.dumps(result, indent=1) + "\n")
  table = render(result)
  if args.readme:
    begin, end = (m.format(result["model"]) for m in MARKERS)
    results_table.rewrite_readme(args.readme, table, begin, end)
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
