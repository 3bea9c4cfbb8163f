"""A trained model, defined once: what training, evaluation, the predictor,
weights files and exports all mean by it.

- `build(config.model, config.model_kwargs, config.layers, num_classes)`: the
  flax module a config names, with its `model_kwargs` (the architecture) and
  a `LayerSpec` from its `layers` section
  (how its layers compute: dtype, per-device BatchNorm, conv padding), with
  the CPU's kernels (`cnn/kernels/`: conv algorithm, oneDNN, fusion barrier)
  when it is built for the CPU backend. The one place that asks where it runs.
- `logits(apply_fn, variables, images, mean, std, flip)`: uint8 images to
  evaluation logits: normalised with the training split's statistics, as in
  training, and with `flip` (test-time augmentation) the mean of the logits of
  each image and of its mirror image.
- `best_epoch` and `reports_final_model`: which checkpoint a run reports. The
  paper protocol reports the final model (the papers select nothing on held-out
  data); the validation protocol the epoch with the best validation accuracy.

Nothing here knows about training loops, checkpoints or files.
"""
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from cnn import kernels
from cnn.augment import normalize
from cnn.models import create_model
from cnn.models.layers import CONV_PADDINGS, Conv, LayerSpec, Norm
from cnn.schema import Section, Setting, at_least, positive

DTYPES = ("float32", "bfloat16", "float16")
BATCHNORM_MODES = ("global", "per_device")
LAYERS = Section("layers", "how every layer computes: each model's LayerSpec (model_fn.build)", {
    "dtype": Setting("float32", "compute dtype ('bfloat16' for mixed precision); parameters "
                     "and optimiser state stay float32", choices=DTYPES),
    "batchnorm": Setting("global", "'global': statistics over the global batch (all devices); "
                         "'per_device': each device's sub-batch, like pmap without axis_name",
                         choices=BATCHNORM_MODES),
    "conv_padding": Setting("symmetric", "'symmetric': the papers' Torch/PyTorch (1, 1) for "
                            "3x3; 'same': TensorFlow's, (0, 1) at stride 2 (symmetric_padding)",
                            choices=tuple(CONV_PADDINGS)),
    "conv_algorithm": Setting("auto", "'auto': each CPU convolution by the algorithm "
                              "conv_algorithms.choose names for its shape (oneDNN where built); "
                              "'builtin': the same rule without oneDNN; 'xla': XLA's own "
                              "everywhere", choices=kernels.CONV_ALGORITHMS),
    "fusion_barrier": Setting(True, "CPU: keep each residual block's output in memory "
                              "(fusion_barrier; 1.8x faster ResNet-56 v1 training); same values",
                              example=False),
}, renamed={"dtype": "dtype", "batchnorm": "batchnorm",
            "model_kwargs.conv_padding": "conv_padding",
            "model_kwargs.conv_algorithm": "conv_algorithm",
            "model_kwargs.fusion_barrier": "fusion_barrier"})


def build(name: str, model_kwargs: Mapping[str, Any], layers: ml_collections.ConfigDict,
          num_classes: int, norm_groups: int = 1, backend: str | None = None) -> nn.Module:
  """The registered model `name` (a config's `model`): `model_kwargs` its
  architecture, `layers` (the config's section) its LayerSpec, with the CPU
  kernels if `backend` (default: JAX's) is the CPU; `norm_groups` > 1:
  per-device BatchNorm statistics in training."""
  spec = LayerSpec(dtype=layers.dtype, conv=Conv(layers.conv_padding), norm=Norm(norm_groups))
  spec = kernels.for_backend(spec, backend or jax.default_backend(), layers.conv_algorithm,
                             layers.fusion_barrier)
  return create_model(name, num_classes=num_classes, spec=spec, **model_kwargs)


EVAL = Section("eval", "evaluation: the test accuracy, the predictor and the report", {
    "flip": Setting(False, "test-time augmentation: average the logits of each image and its "
                    "mirror image (evaluation, predictor, report)", example=True),
    "batch_size": Setting(500, "images per evaluation batch (the last one padded)", positive,
                          "> 0"),
    "report_image_index": Setting(0, "--mode=evaluate: the test image whose activations the "
                                  "report draws", at_least(0), ">= 0"),
}, renamed={"eval_flip": "flip", "eval_batch_size": "batch_size",
            "report_image_index": "report_image_index"})
CONFIG = (LAYERS, EVAL)


def logits(apply_fn: Callable[..., Any], variables: dict, images: jnp.ndarray,
           mean: tuple[float, ...], std: tuple[float, ...], flip: bool) -> jnp.ndarray:
  """Evaluation logits of uint8 images (N, H, W, C); jit it with the caller's shardings."""
  x = normalize(images, mean, std)
  y = apply_fn(variables, x, train=False)
  if flip:
    y = (y + apply_fn(variables, x[:, :, ::-1], train=False)) / 2
  return y


def reports_final_model(protocol: str) -> bool:
  """True for the paper protocol: the final model is the one reported."""
  return protocol == "paper"


def best_epoch(history: list[dict], kept_steps: Iterable[int] | None = None) -> dict:
  """The epoch record with the highest validation accuracy (earliest on ties),
  among those whose checkpoint still exists if `kept_steps` is given."""
  if kept_steps is not None:
    kept = set(kept_steps)
    history = [r for r in history if r["step"] in kept] or history[-1:]
  scored = [r for r in history if r.get("val_accuracy") is not None]
  return max(scored, key=lambda r: r["val_accuracy"]) if scored else history[-1]
