"""A trained model as a function: `load(workdir)` gives a `Predictor`.

    from cnn.inference import predictor
    p = predictor.load("runs/r20")                 # the checkpoint results.json reports
    p = predictor.load("results/weights/resnet20_mnist_seed0.safetensors")  # published
    probabilities = p.probabilities(uint8_images)  # (N, H, W, C) -> (N, classes)

A predictor holds what inference needs and nothing else: the model, its
evaluation variables (the moving averages when the run kept them), the
dataset's input shape and normalisation, the class names and whether the
logits average the image with its mirror image (`config.eval.flip`). Only
those arrays are read from the checkpoint (an orbax partial restore): no
optimizer state, no training split, no input pipeline.

Its logits equal evaluation's (`train.Experiment.predict`): the same
normalisation arithmetic in float32 and the same batch size
(`config.eval.batch_size`), padded the same way.
"""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import linen as nn
from scipy import special

from cnn import augment, batching, checkpoint, datasets, model_fn, settings
from cnn import workdir as workdirs
from cnn.errors import UserError, unknown_name

WHICH = ("best", "last")


@dataclasses.dataclass(frozen=True)
class Predictor:
  """`model.apply(variables, normalized_images, train=False)`, wrapped."""
  model: nn.Module
  variables: dict  # {"params", "batch_stats"}
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]  # per channel, on [0, 1] pixels
  std: tuple[float, ...]
  class_names: tuple[str, ...]
  flip: bool  # average the logits of each image and its mirror image
  batch_size: int
  source: dict  # where the variables came from: workdir, which, step, epoch, val_accuracy
  config: ml_collections.ConfigDict  # the run's
  history: tuple[dict, ...]  # the run's per-epoch metrics, up to the newest checkpoint

  def normalize(self, images: np.ndarray) -> np.ndarray:
    """uint8 pixels (N, H, W, C) -> float32 with the training split's per-channel
    mean and standard deviation: `cnn.augment.normalize`, as in training."""
    return np.asarray(augment.normalize(np.asarray(images), self.mean, self.std))

  @functools.cached_property
  def _logits_fn(self):
    return jax.jit(lambda variables, images: model_fn.logits(
        self.model.apply, variables, images, self.mean, self.std, self.flip))

  def check_config(self, config: ml_collections.ConfigDict) -> None:
    """Refuses a config of another model or dataset than the checkpoint's."""
    what = lambda c: {"model": c.model, "dataset": c.data.name,
                      "model_kwargs": c.model_kwargs.to_dict()}
    ours, theirs = what(config), what(self.config)
    keys = tuple(ours)
    diff = "; ".join(f"{k}: checkpoint has {theirs[k]!r}, config has {ours[k]!r}"
                     for k in keys if ours[k] != theirs[k])
    if diff:
      where = (f"workdir {self.source['workdir']}" if "workdir" in self.source
               else f"weights file {self.source.get('weights')}")
      raise UserError(f"{where} holds an incompatible checkpoint ({diff}); use the config "
                      "it was trained with")

  def check_images(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == len(self.image_shape):  # one image, no batch axis
      images = images[None]
    if images.shape[1:] != tuple(self.image_shape):
      raise UserError(f"images of shape {images.shape[1:]} given, the model takes "
                      f"{tuple(self.image_shape)} (height, width, channels)")
    return images

  def logits(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 images -> (N, classes) float32 logits, in batches of
    `batch_size` (the last one zero-padded, as evaluation pads it)."""
    images = self.check_images(images)
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = np.asarray(images[start:start + self.batch_size])
      padded = batching.pad_to(chunk, self.batch_size)
      out.append(np.asarray(self._logits_fn(self.variables, padded))[:len(chunk)])
    if not out:
      return np.zeros((0, len(self.class_names)), np.float32)
    return np.concatenate(out).astype(np.float32)

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """Softmax of the logits, in float64 (rows sum to 1 to 1e-12)."""
    return softmax(self.logits(images))


def softmax(logits: np.ndarray) -> np.ndarray:
  """scipy's, in float64 (stable for large logits; calibration's too)."""
  return special.softmax(np.asarray(logits, np.float64), axis=-1)


def _config_of(workdir: str, meta: dict) -> ml_collections.ConfigDict:
  """The run's config: stored in each checkpoint; for checkpoints written
  before that, the one `results.json` records."""
  if "config" in meta:
    return settings.upgrade(meta["config"])
  results = workdirs.Workdir.of(workdir).results
  if results.exists():
    return settings.upgrade(json.loads(results.read_text())["config"])
  raise UserError(f"the checkpoints in {workdir} do not record their config (written by an "
                  "older version, and there is no results.json); finish the run or rerun it "
                  "with this version")


def _class_names_from_dataset(config) -> list[str]:
  """For checkpoints written before they recorded their class names."""
  return datasets.open_dataset(config.data).class_names()


def abstract_variables(model: nn.Module, image_shape) -> dict:
  """Shapes and dtypes of the model's {"params", "batch_stats"}, without computing them."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, *image_shape), jnp.float32),
                                             train=False))
  return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def choose_step(meta: dict, steps: list[int], which: str, protocol: str) -> dict:
  """The epoch record of the checkpoint to load: "last", or "best", the one
  `results.json` reports (best by validation accuracy; the final model under
  the paper protocol)."""
  history = [r for r in meta["history"] if r["step"] in set(steps)]
  if which == "last" or model_fn.reports_final_model(protocol) or not history:
    return {"step": max(steps), **next((r for r in history if r["step"] == max(steps)), {})}
  return model_fn.best_epoch(history)


def from_weights(path: str, sha256: str | None = None) -> Predictor:
  """The predictor of a published weights file (`cnn.inference.weights`),
  checked against its recorded `sha256` when given."""
  from cnn.inference import weights  # pylint: disable=import-outside-toplevel (safetensors)
  contents = weights.read(path, sha256)
  model = model_fn.build(contents.config.model, contents.config.model_kwargs,
                         contents.config.layers, len(contents.class_names))
  variables = jax.tree.map(jnp.asarray, contents.variables)
  weights.check_shapes(path, variables, abstract_variables(model, contents.image_shape))
  return Predictor(
      model=model, variables={"params": variables["params"],
                              "batch_stats": variables.get("batch_stats", {})},
      image_shape=contents.image_shape, mean=contents.mean, std=contents.std,
      class_names=contents.class_names, flip=contents.flip,
      batch_size=int(contents.config.eval.batch_size), source=contents.source,
      config=contents.config, history=())


def load(workdir: str, which: str = "best", sha256: str | None = None) -> Predictor:
  """The predictor of a trained (or training) workdir's `which` checkpoint,
  or of a published weights file (`*.safetensors`: `from_weights`, with its
  recorded `sha256` if given)."""
  if str(workdir).endswith(".safetensors"):  # weights.SUFFIX; needs the safetensors package
    return from_weights(workdir, sha256)
  if which not in WHICH:
    raise unknown_name("checkpoint choice", which, WHICH)
  directory = workdirs.Workdir.of(workdir).checkpoints
  steps = checkpoint.finalized_steps(workdir)
  if not steps:
    raise UserError(f"no checkpoint in {directory}; train first: python main.py "
                    f"--config=... --workdir={workdir}")
  meta = checkpoint.read_for_reader(workdir, max(steps), meta=True)["meta"]
  config = _config_of(workdir, meta)
  record = choose_step(meta, steps, which, config.protocol)
  spec = datasets.get_spec(config.data.name)
  model = model_fn.build(config.model, config.model_kwargs, config.layers, spec.num_classes)
  # Onto this process's first device: on a multi-process job each process
  # reads its own copy, so prediction needs no other process.
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  wanted = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local),
                        abstract_variables(model, spec.image_shape))
  ema = config.optim.ema_decay > 0
  item = {"ema": wanted} if ema else wanted
  state = checkpoint.read_for_reader(workdir, record["step"], state=ocp.args.PyTreeRestore(
      item=item, partial_restore=True,
      restore_args=ocp.checkpoint_utils.construct_restore_args(item)))["state"]
  variables = state["ema"] if ema else state
  class_names = meta.get("class_names") or _class_names_from_dataset(config)
  return Predictor(
      model=model, variables={"params": variables["params"],
                              "batch_stats": variables.get("batch_stats", {})},
      image_shape=tuple(spec.image_shape), mean=tuple(spec.mean), std=tuple(spec.std),
      class_names=tuple(class_names), flip=bool(config.eval.flip),
      batch_size=int(config.eval.batch_size),
      source={"workdir": str(workdir), "which": which, "step": record["step"],
              "epoch": record.get("epoch"), "val_accuracy": record.get("val_accuracy")},
      config=config, history=tuple(meta["history"]))
