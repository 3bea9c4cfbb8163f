"""Every convolution shape of every registered model, timed per algorithm:
the table that `cnn/kernels/conv_algorithms.choose` is derived from.

  pip install -r requirements-bench.txt
  python benchmarks/conv_shapes.py --out benchmarks/results/conv_shapes_cpu.json \
      --readme benchmarks/README.md

For each distinct layer shape (found by tracing every model of the registry on
32x32x3 inputs, and the MNIST configs' models on 28x28x1, at the training
batch of 128) it times the forward pass, the input gradient and the kernel
gradient separately, for each algorithm that applies to it
(`conv_algorithms.candidates`: im2col has no grouped form, "split" is for
grouped layers) and for PyTorch's CPU convolution (channels-last,
`torch.nn.grad`), in alternating rounds, and reports medians in milliseconds
per call (each sample times enough back-to-back calls to last about 30 ms,
so that thread wake-up and dispatch do not dominate small layers). PyTorch
runs in a worker process that sleeps while JAX is timed.

The JSON is written after every shape; the same command again continues an
interrupted run (shapes already in `--out` with every algorithm are not timed
again). A shape measured before an algorithm was added gets only that
algorithm timed, its date under the row's "added".
`--render FILE --readme benchmarks/README.md` rewrites the table in that
README from a saved JSON; `--check` fails if it is out of date.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- conv-shapes:begin -->", "<!-- conv-shapes:end -->"
MNIST_MODELS = ("resnet20_v1", "vgg16")  # configs/*_mnist.py: 28x28x1 inputs
# Timed first (an interrupted run has their rows): the models of benchmarks/run.py
# and of the paper configs.
FIRST = ("resnet20_v1", "resnet20_v2", "resnet56_v1", "resnet56_v2", "resnet110_v1", "vgg16")
PRODUCTS = ("forward", "input_grad", "kernel_grad")


def layer_key(layer: dict) -> tuple:
  return (layer["batch"], layer["height"], layer["width"], layer["in_channels"],
          layer["out_channels"], tuple(layer["kernel"]), tuple(layer["strides"]),
          tuple(map(tuple, layer["padding"])), layer["groups"])


def conv_layers(model_name: str, input_shape: tuple[int, ...], batch: int) -> list[dict]:
  """The conv layers of a model's training forward pass, from its jaxpr."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cnn.models import create_model  # pylint: disable=import-outside-toplevel
  model = create_model(model_name, num_classes=10)  # flax's layers: XLA's convolutions
  x = jnp.zeros((batch, *input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False))
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}))(
          variables, x)
  found = []

  def walk(jpr):
    for eqn in jpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        p = eqn.params
        found.append({"batch": lhs[0], "height": lhs[1], "width": lhs[2],
                      "in_channels": lhs[3], "out_channels": rhs[3], "kernel": list(rhs[:2]),
                      "strides": list(p["window_strides"]),
                      "padding": [list(q) for q in p["padding"]],
                      "groups": p["feature_group_count"]})
      for value in eqn.params.values():  # cond branches, custom_vjp bodies, ...
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          if hasattr(sub, "eqns"):
            walk(sub)
          elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
            walk(sub.jaxpr)

  walk(jaxpr.jaxpr)
  return found


def all_layers(batch: int, models: list[str] | None) -> list[dict]:
  """Distinct shapes, each with the models (and how many layers) using it."""
  from cnn.models import registry  # pylint: disable=import-outside-toplevel
  runs = [(name, (32, 32, 3)) for name in sorted(registry()) if not models or name in models]
  runs += [(f"{name} (MNIST)", (28, 28, 1)) for name in MNIST_MODELS
           if not models or name in models]
  shapes: dict[tuple, dict] = {}
  for label, input_shape in runs:
    for layer in conv_layers(label.split(" ")[0], input_shape, batch):
      entry = shapes.setdefault(layer_key(layer), {**layer, "used_by": {}})
      entry["used_by"][label] = entry["used_by"].get(label, 0) + 1
  return sorted(shapes.values(),
                key=lambda s: (not any(m.split(" ")[0] in FIRST for m in s["used_by"]),
                               layer_key(s)))


class JaxTimer:
  """Jitted forward, input gradient and kernel gradient of one layer, for one
  algorithm (all three products use it)."""

  def __init__(self, layer: dict, algorithm: str):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax import lax  # pylint: disable=import-outside-toplevel
    from cnn.kernels import conv_algorithms as ca  # pylint: disable=import-outside-toplevel
    self._jax = jax
    rng = np.random.default_rng(0)
    n, h, w, c, o = (layer[k] for k in ("batch", "height", "width", "in_channels",
                                        "out_channels"))
    kh, kw = layer["kernel"]
    strides, pads, groups = tuple(layer["strides"]), tuple(map(tuple, layer["padding"])), \
        layer["groups"]
    self.x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.float32)
    self.w = jnp.asarray(rng.normal(size=(kh, kw, c // groups, o)) * 0.1, jnp.float32)
    if algorithm == "xla":
      conv = lambda x, k: lax.conv_general_dilated(  # noqa: E731
          x, k, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=groups)
    else:
      conv = ca.planned_conv(ca.Plan(algorithm, algorithm, algorithm), self.x.shape,
                             self.w.shape, strides, pads)
    y = jax.eval_shape(conv, self.x, self.w)
    self.g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    self.fns = {
        "forward": jax.jit(conv),
        "input_grad": jax.jit(lambda x, k, g: jax.vjp(lambda t: conv(t, k), x)[1](g)[0]),
        "kernel_grad": jax.jit(lambda x, k, g: jax.vjp(lambda t: conv(x, t), k)[1](g)[0]),
    }
    self.calls, self.first_ms = {}, {}
    for product in PRODUCTS:  # compile, then size the timed loops
      self.calls[product] = 1
      self.time(product)
      self.first_ms[product] = self.time(product)
      self.calls[product] = calls_for(self.first_ms[product])

  def time(self, product: str) -> float:
    """Milliseconds per call, over back-to-back calls lasting about MIN_MS."""
    args = (self.x, self.w) if product == "forward" else (self.x, self.w, self.g)
    fn, calls = self.fns[product], self.calls[product]
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    self._jax.block_until_ready(out)
    return (time.perf_counter() - start) * 1e3 / calls


MIN_MS = 30.0  # each sample: enough back-to-back calls to last this long
SLOW_MS = 5000.0  # a product slower than this per call: one round for its layer


def calls_for(ms: float) -> int:
  """Back-to-back calls per sample, so thread wake-up and dispatch do not
  dominate small layers (for JAX and PyTorch alike)."""
  return max(1, min(50, int(MIN_MS / max(ms, 1e-3))))


class TorchWorker:
  """This file with --torch-worker in a child process: one stdin line (a
  layer as JSON) is answered with one line, the ms of forward, input grad and
  kernel grad (after one warm-up of each)."""

  def __init__(self):
    self.proc = None  # started on first use: rows that only add algorithms need no PyTorch

  def time(self, layer: dict) -> dict[str, float]:
    if self.proc is None:
      self.proc = subprocess.Popen([sys.executable, __file__, "--torch-worker"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.proc.stdin.write(json.dumps(layer) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError("the PyTorch worker died; is torch installed (requirements-bench.txt)?")
    return dict(zip(PRODUCTS, json.loads(line)))

  def close(self) -> None:
    if self.proc is not None:
      self.proc.stdin.close()
      self.proc.wait()


def torch_worker() -> None:
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count())
  cache: dict[str, tuple] = {}
  for line in sys.stdin:
    layer = json.loads(line)
    if line not in cache:
      n, h, w, c, o = (layer[k] for k in ("batch", "height", "width", "in_channels",
                                          "out_channels"))
      (kh, kw), groups = layer["kernel"], layer["groups"]
      (pt, pb), (pl, pr) = layer["padding"]
      gen = torch.Generator().manual_seed(0)
      x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
      if (pt, pl) != (pb, pr):  # asymmetric ("SAME" at stride 2): pad explicitly
        x = torch.nn.functional.pad(x, (pl, pr, pt, pb)).contiguous(
            memory_format=torch.channels_last)
        pt = pl = 0
      k = (torch.randn(o, c // groups, kh, kw, generator=gen) * 0.1).contiguous(
          memory_format=torch.channels_last)
      conv = lambda x, k, s=tuple(layer["strides"]), p=(pt, pl), g=groups: (  # noqa: E731
          torch.nn.functional.conv2d(x, k, None, s, p, 1, g))
      y = conv(x, k)
      gy = torch.randn(y.shape, generator=gen).contiguous(memory_format=torch.channels_last)
      s, p = tuple(layer["strides"]), (pt, pl)
      products = (lambda: conv(x, k),
                  lambda: torch.nn.grad.conv2d_input(x.shape, k, gy, s, p, 1, groups),
                  lambda: torch.nn.grad.conv2d_weight(x, k.shape, gy, s, p, 1, groups))
      calls = []
      for f in products:  # warm up, then size the timed loops as JaxTimer does
        with torch.no_grad():
          f()
          start = time.perf_counter()
          f()
          calls.append(calls_for((time.perf_counter() - start) * 1e3))
      cache[line] = list(zip(products, calls))
    times = []
    for f, calls in cache[line]:
      with torch.no_grad():
        start = time.perf_counter()
        for _ in range(calls):
          f()
        times.append((time.perf_counter() - start) * 1e3 / calls)
    print(json.dumps(times), flush=True)


def measure(layers: list[dict], repeats: int, done: list[dict],
            save=lambda rows: None) -> list[dict]:
  """Times every layer not in `done` (rows of an earlier, interrupted run of
  the same command), calling `save(rows)` after each, so a long run can be
  stopped and continued."""
  measured = {layer_key(r): r for r in done}
  worker = TorchWorker()
  rows = []
  try:
    for i, layer in enumerate(layers):
      done_row = measured.get(layer_key(layer))
      # A row measured before an algorithm was added: time only what it lacks
      # (XLA's grouped kernel gradients alone take minutes), keep the rest
      # and say when the additions were timed.
      earlier = done_row["ms"] if done_row else {}
      algorithms = [a for a in algorithms_for(layer) if a not in earlier]
      if not algorithms:
        rows.append({**done_row, "used_by": layer["used_by"]})
        continue
      with_torch = not earlier  # PyTorch's times are kept from the row's first run
      timers = {a: JaxTimer(layer, a) for a in algorithms}
      timed = [*algorithms, "torch"] if with_torch else algorithms
      samples = {a: {p: [] for p in PRODUCTS} for a in timed}
      if with_torch:
        worker.time(layer)  # warm-up
      # Calls of many seconds (XLA's grouped convolutions on ResNeXt-29) vary
      # by far less than the gaps measured; one round keeps the table to hours.
      slowest = max(t.first_ms[p] for t in timers.values() for p in PRODUCTS)
      rounds = 1 if slowest > SLOW_MS else repeats
      for _ in range(rounds):
        for a, timer in timers.items():
          for p in PRODUCTS:
            samples[a][p].append(timer.time(p))
        if with_torch:
          for p, t in worker.time(layer).items():
            samples["torch"][p].append(t)
      medians = {a: {p: round(statistics.median(v), 2) for p, v in s.items()}
                 for a, s in samples.items()}
      if earlier:
        added = {**done_row.get("added", {}), **{a: datetime.date.today().isoformat()
                                                  for a in algorithms}}
        rows.append({**done_row, "used_by": layer["used_by"], "ms": {**earlier, **medians},
                     "added": added})
      else:
        rows.append({**layer, "ms": medians} | ({"rounds": rounds} if rounds != repeats else {}))
      reached = {layer_key(r) for r in rows}
      save(rows + [r for r in done if layer_key(r) not in reached])  # keep the later ones
      print(f"[{i + 1}/{len(layers)}] {describe(layer)}: " + "  ".join(
          f"{a} " + "/".join(f"{medians[a][p]:.1f}" for p in PRODUCTS) for a in medians),
            flush=True)
  finally:
    worker.close()
  return rows


def algorithms_for(layer: dict, with_onednn: bool | None = None) -> tuple[str, ...]:
  """The algorithms that apply to the layer (`conv_algorithms.candidates`)."""
  from cnn.kernels import conv_algorithms as ca  # pylint: disable=import-outside-toplevel
  return ca.candidates(shape_of(layer), with_onednn)


def describe(layer: dict) -> str:
  kh, kw = layer["kernel"]
  s = layer["strides"][0]
  g = f" g{layer['groups']}" if layer["groups"] > 1 else ""
  return (f"{layer['height']}x{layer['width']}x{layer['in_channels']} "
          f"{kh}x{kw}/{s} -> {layer['out_channels']}{g}")


def shape_of(layer: dict):
  """The layer as `conv_algorithms.ConvShape`."""
  from cnn.kernels import conv_algorithms as ca  # pylint: disable=import-outside-toplevel
  return ca.layer_shape((layer["batch"], layer["height"], layer["width"], layer["in_channels"]),
                        (*layer["kernel"], layer["in_channels"] // layer["groups"],
                         layer["out_channels"]), layer["strides"])


def rule(layer: dict, onednn: bool = False) -> dict[str, str]:
  """The current rule's pick for a layer (`onednn`: where oneDNN is available)."""
  from cnn.kernels import conv_algorithms as ca  # pylint: disable=import-outside-toplevel
  return ca.choose(shape_of(layer), onednn=onednn)._asdict()


def step_ms(row: dict, plan: dict) -> float:
  return sum(row["ms"][plan[p]][p] for p in PRODUCTS)


def render(result: dict) -> str:
  """The per-shape table: ms of each product per algorithm, the built-in rule's
  pick, and oneDNN's column (the rule's pick where oneDNN is available)."""
  m = result["machine"]
  onednn_dates = sorted({r.get("added", {}).get("onednn", result["date"])
                         for r in result["rows"] if "onednn" in r["ms"]})
  out = [f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores), jax {m['jax']}, "
         f"torch {m['torch']}; batch {result['batch']}, fp32, medians of {result['repeats']} "
         "alternating rounds (one round where a call takes over 5 s, marked), "
         "milliseconds. Each cell: forward / input gradient / kernel "
         "gradient. **Bold**: the algorithm the built-in rule (`conv_algorithms.choose` "
         "without oneDNN) picks; with oneDNN available the rule picks \"onednn\" for every "
         f"product (its column timed {', '.join(onednn_dates) or 'not yet'} on the same kind "
         "of machine, with `backend.retain_host_memory`). Layers: how many layers of that "
         "shape, summed over the models.", "",
         "| layer (HxWxC kxk/stride -> out) | layers | xla | im2col | taps | split | onednn | "
         "PyTorch | built-in rule: fwd / dx / dw | built-in vs xla | onednn vs PyTorch |",
         "|---|---:|---|---|---|---|---|---|---|---:|---:|"]
  total = {"rule": 0.0, "xla": 0.0, "torch": 0.0, "onednn": 0.0}
  complete = [r for r in result["rows"]
              if set(algorithms_for(r, with_onednn=False)) <= set(r["ms"])]
  for row in sorted(complete, key=layer_key):
    pick = rule(row)

    def cell(a, row=row, pick=pick):
      if a not in row["ms"]:
        return "n/a"
      return " / ".join((f"**{row['ms'][a][p]:.1f}**" if pick[p] == a
                         else f"{row['ms'][a][p]:.1f}") for p in PRODUCTS)
    ours, xla = step_ms(row, pick), step_ms(row, dict.fromkeys(PRODUCTS, "xla"))
    torch = sum(row["ms"]["torch"].values())
    count = sum(row["used_by"].values())
    total["rule"] += ours * count
    total["xla"] += xla * count
    total["torch"] += torch * count
    if "onednn" in row["ms"]:
      onednn = step_ms(row, dict.fromkeys(PRODUCTS, "onednn"))
      total["onednn"] += onednn * count
      versus = f"{torch / onednn:.2f}x"
    else:
      versus = "n/a"
    rounds = f" ({row['rounds']} round)" if "rounds" in row else ""
    torch_cell = " / ".join(f"{v:.1f}" for v in row["ms"]["torch"].values())
    out.append(f"| {describe(row)}{rounds} | {count} | {cell('xla')} | {cell('im2col')} | "
               f"{cell('taps')} | {cell('split')} | {cell('onednn')} | {torch_cell}"
               f" | {' / '.join(pick[p] for p in PRODUCTS)} | {xla / ours:.2f}x | "
               f"{versus} |")
  measured = len(complete)
  scope = ("All layers of all models" if measured >= result.get("shapes_total", measured)
           else f"The {measured} of {result['shapes_total']} shapes measured so far (the "
                "command continues the table; the models of run.py and the paper configs "
                "come first)")
  out += ["", f"{scope}, each shape weighted by how many layers have it: oneDNN "
          f"{total['onednn'] / 1e3:.1f} s, the built-in rule's {total['rule'] / 1e3:.1f} s, "
          f"XLA alone {total['xla'] / 1e3:.1f} s, PyTorch {total['torch'] / 1e3:.1f} s."]
  return "\n".join(out) + "\n"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=Path)
  parser.add_argument("--readme", type=Path, help="rewrite this README's conv-shapes block")
  parser.add_argument("--render", type=Path, help="only render this JSON (with --readme)")
  parser.add_argument("--check", action="store_true")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--models", help="comma-separated registered names (default: all)")
  parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.torch_worker:
    torch_worker()
    return 0
  from benchmarks.run import publish, rewrite_readme  # pylint: disable=import-outside-toplevel
  if args.render:
    return publish(render(json.loads(args.render.read_text())), args.readme, BEGIN, END,
                   check=args.check, what="conv-shapes",
                   fix=f"python benchmarks/conv_shapes.py --render {args.render} "
                       f"--readme {args.readme}")
  from benchmarks.run import machine  # pylint: disable=import-outside-toplevel
  from cnn import backend  # pylint: disable=import-outside-toplevel
  backend.retain_host_memory()  # as main.py does, before JAX starts (cnn/backend.py)
  layers = all_layers(args.batch, args.models.split(",") if args.models else None)
  print(f"{len(layers)} distinct conv shapes", flush=True)
  result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
            "machine": machine(), "batch": args.batch, "repeats": args.repeats,
            "shapes_total": len(layers), "rows": []}
  done = []
  if args.out and args.out.exists():  # continue an interrupted run of the same table
    earlier = json.loads(args.out.read_text())
    if (earlier["batch"], earlier["repeats"]) == (args.batch, args.repeats):
      done, result["date"] = earlier["rows"], earlier["date"]
      print(f"continuing {args.out}: {len(done)} shapes already measured", flush=True)

  def save(rows):
    if args.out:
      args.out.parent.mkdir(parents=True, exist_ok=True)
      args.out.write_text(json.dumps({**result, "rows": rows}, indent=1) + "\n")

  result["rows"] = measure(layers, args.repeats, done, save)
  save(result["rows"])
  table = render(result)
  if args.readme:
    rewrite_readme(args.readme, table, BEGIN, END)
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
