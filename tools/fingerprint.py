"""Fingerprints of what the code computes, to show a refactoring changed nothing.

  python tools/fingerprint.py --out /tmp/after.json [--models all] [--tiny]
  python tools/fingerprint.py --compare /tmp/before.json /tmp/after.json

For every registered model (built by `model_fn.build` from the default config,
as training builds it: fp32, and bf16 with per-device BatchNorm over 2 groups):
SHA-256s of its initial parameters, its evaluation logits on fixed images, its
training logits, new BatchNorm statistics and parameter gradients. With
`--tiny`, `main.py` trains configs/tiny_mnist.py and configs/tiny_cifar10.py
(shortened) and their metrics.jsonl, steps.jsonl and final parameters are
hashed. Run it at two commits on the same machine (a CPU's oneDNN kernels
differ between CPUs) and `--compare` the two files: every hash must match.
"""
import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = {"tiny_mnist": ["--config.num_epochs=2", "--config.data.train_split=train[:512]",
                       "--config.data.validation_split=train[59000:59500]",
                       "--config.data.test_split=test[:500]"],
        "tiny_cifar10": ["--config.num_epochs=2", "--config.data.train_split=train[:512]",
                         "--config.data.validation_split=train[49000:49500]",
                         "--config.data.test_split=test[:500]"]}
SMALL_INPUT = {"mnist": (2, 28, 28, 1), "cifar": (2, 32, 32, 3)}


def digest(tree) -> str:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.asarray(leaf, np.float32).tobytes())
  return h.hexdigest()[:16]


def model_prints(name: str, dtype: str, norm_groups: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from cnn import model_fn  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.model, config.layers.dtype = name, dtype
  model = model_fn.build(name, {}, config.layers, 10, norm_groups)
  x = jnp.asarray(np.random.default_rng(0).normal(size=SMALL_INPUT["cifar"]), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  variables = jax.jit(lambda: model.init(rngs, x, train=False))()
  evaluated = jax.jit(lambda v: model.apply(v, x, train=False))(variables)

  def loss(params):
    logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                  mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    return jnp.mean(logits.astype(jnp.float32) ** 2), (logits, updates)

  grads, (logits, updates) = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  return {"init": digest(variables), "eval": digest(evaluated), "train": digest(logits),
          "stats": digest(updates), "grads": digest(grads)}


def tiny_prints(name: str, args: list[str], tmp: Path) -> dict:
  workdir = tmp / name
  subprocess.run([sys.executable, "main.py", f"--config=configs/{name}.py",
                  f"--workdir={workdir}", *args], cwd=ROOT, check=True,
                 capture_output=True, text=True)
  out = {f: hashlib.sha256((workdir / f).read_bytes()).hexdigest()[:16]
         for f in ("metrics.jsonl", "steps.jsonl")}
  results = json.loads((workdir / "results.json").read_text())
  out["test_accuracy"] = results["test_accuracy"]
  return out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out")
  parser.add_argument("--models", default="all", help="comma-separated names, or all")
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
  args = parser.parse_args()
  if args.compare:
    before, after = (json.loads(Path(p).read_text()) for p in args.compare)
    differ = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    for key in differ:
      print(f"DIFFERS {key}: {before.get(key)} -> {after.get(key)}")
    print(f"{len(before) - len(differ)} of {len(before)} equal")
    return 1 if differ else 0
  from cnn.models import registry  # pylint: disable=import-outside-toplevel
  names = sorted(registry()) if args.models == "all" else args.models.split(",")
  prints = {}
  for name in names:
    for dtype, groups in (("float32", 1), ("bfloat16", 2)):
      prints[f"{name}/{dtype}/groups{groups}"] = model_prints(name, dtype, groups)
      print(name, dtype, groups, flush=True)
  if args.tiny:
    with tempfile.TemporaryDirectory() as tmp:
      for name, extra in TINY.items():
        prints[f"main.py {name}"] = tiny_prints(name, extra, Path(tmp))
  Path(args.out).write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
