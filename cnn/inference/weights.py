"""Published weights: a trained model's evaluation variables in one file.

    from cnn.inference import predictor
    p = predictor.load("results/weights/resnet20_mnist_seed0.safetensors")

The format is safetensors (https://huggingface.co/docs/safetensors): a JSON
header then raw little-endian arrays, no code execution on load, readable from
PyTorch, NumPy and Rust too. One tensor per variable, named by its path in the
Flax tree ("params/conv_init/kernel", "batch_stats/bn_init/mean"; the moving
averages of an EMA run), float32 as trained. The header's metadata (strings)
holds what inference needs besides the arrays:

  format        "cnn-weights/1"
  config        the run's config (JSON): model, model_kwargs, dataset, ...
  class_names   JSON list, index -> name
  image_shape, mean, std   the input shape and the normalisation used in training (JSON)
  source        JSON: experiment name, step, epoch, validation and test accuracy

`results/<name>_seed<seed>.json` records each shipped file's size and SHA-256
(`python -m cnn.report.results_table record` writes both);
`predictor.load(path, sha256=...)` refuses a file whose checksum differs.
The same weights always give the same bytes: safetensors writes the metadata
in a new random order on every save (safetensors/safetensors#584, open), so
`save` rewrites the header with its keys sorted (`canonical`).
"""
import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save as to_bytes

from cnn import settings
from cnn.errors import UserError

FORMAT = "cnn-weights/1"
SUFFIX = ".safetensors"
# The largest weights file results/ keeps in git; larger ones are published elsewhere. The
# repository tracks no file over 2 MiB, and the borrowed GPU box carries the whole tree with
# every command within 64 MiB (tools/accelerator_kit.py): ResNet-20 and -32 fit, ResNet-56's
# 3.5 MB does not.
GIT_SIZE_LIMIT_BYTES = 2 * 2**20


def sha256(path: str | Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(2**20), b""):
      digest.update(block)
  return digest.hexdigest()


def _by_name(tree: dict) -> dict:
  """{"params/conv_init/kernel": leaf, ...}"""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(k.key for k in path): leaf for path, leaf in leaves}


def _flat(tree: dict) -> dict[str, np.ndarray]:
  return {name: np.asarray(leaf) for name, leaf in _by_name(tree).items()}


def _nested(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for name, array in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = array
  return tree


def save(p, path: str | Path, source: dict) -> dict:
  """Writes predictor `p`'s variables and preprocessing to `path`; returns
  {"bytes", "sha256"}. `source` says where they come from (name, accuracies)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  metadata = {
      "format": FORMAT, "config": p.config.to_json(),
      "class_names": json.dumps(list(p.class_names)),
      "image_shape": json.dumps(list(p.image_shape)), "mean": json.dumps(list(p.mean)),
      "std": json.dumps(list(p.std)), "flip": json.dumps(p.flip),
      "source": json.dumps({**{k: p.source.get(k) for k in ("step", "epoch", "val_accuracy")},
                            **source}),
  }
  path.write_bytes(canonical(to_bytes(_flat(p.variables), metadata=metadata)))
  return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def canonical(blob: bytes) -> bytes:
  """The safetensors file `blob` with its JSON header's keys sorted, padded
  with spaces to 8 bytes as safetensors pads it; the arrays, and the offsets
  that locate them after the header, are unchanged."""
  size = int.from_bytes(blob[:8], "little")
  header = json.dumps(json.loads(blob[8:8 + size]), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()
  header += b" " * (-len(header) % 8)
  return len(header).to_bytes(8, "little") + header + blob[8 + size:]


def _metadata(path: str) -> dict[str, str]:
  """The header's metadata, read without loading the arrays."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    if size <= 0 or size > 100 * 2**20:
      raise SafetensorError("header size out of range")
    return json.loads(f.read(size)).get("__metadata__") or {}


@dataclasses.dataclass(frozen=True)
class Contents:
  """What a weights file holds: the run's config (today's form), the
  variables (nested numpy arrays) and the preprocessing inference needs."""
  config: ml_collections.ConfigDict
  variables: dict
  class_names: tuple[str, ...]
  image_shape: tuple[int, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  flip: bool
  source: dict


def read(path: str, sha256_expected: str | None = None) -> Contents:
  """The contents of a weights file, checked against `sha256_expected` when
  given; `cnn.inference.predictor.load(path)` makes them a predictor."""
  if not Path(path).is_file():
    raise UserError(f"weights file {path} not found")
  if sha256_expected and sha256(path) != sha256_expected:
    raise UserError(f"weights file {path} does not match its recorded SHA-256 "
                    f"{sha256_expected}: damaged or replaced; fetch it again")
  try:
    meta = _metadata(path)
    flat = load_file(path)
  except (SafetensorError, ValueError, OSError) as e:
    raise UserError(f"weights file {path} cannot be read ({e}); fetch it again") from None
  if meta.get("format") != FORMAT:
    raise UserError(f"{path} is not a weights file of this project (format "
                    f"{meta.get('format')!r}, expected {FORMAT!r})")
  return Contents(
      config=settings.upgrade(json.loads(meta["config"])), variables=_nested(flat),
      class_names=tuple(json.loads(meta["class_names"])),
      image_shape=tuple(json.loads(meta["image_shape"])), mean=tuple(json.loads(meta["mean"])),
      std=tuple(json.loads(meta["std"])), flip=bool(json.loads(meta.get("flip", "false"))),
      source={"weights": str(path), **json.loads(meta.get("source", "{}"))})


def check_shapes(path: str, variables: dict, wanted: dict) -> None:
  """Refuses variables whose names or shapes are not the model's (one line)."""
  got = {k: tuple(v.shape) for k, v in _by_name(variables).items()}
  want = {k: tuple(v.shape) for k, v in _by_name(wanted).items()}
  if got != want:
    differ = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
    raise UserError(f"weights file {path} does not fit its model {differ[:3]} ...; "
                    "it was written by another version of the model code")
