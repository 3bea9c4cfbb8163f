"""A trained model, defined once: what training, evaluation, the predictor,
weights files and exports all mean by it.

- `build(config, num_classes)`: the flax module a config names, with its
  `model_kwargs` (the architecture) and a `LayerSpec` from `config.layers`
  (how its layers compute: dtype, per-device BatchNorm, conv padding and
  algorithm, fusion barrier).
- `logits(apply_fn, variables, images, mean, std, flip)`: uint8 images to
  evaluation logits: normalised with the training split's statistics, as in
  training, and with `flip` (test-time augmentation) the mean of the logits of
  each image and of its mirror image.
- `best_epoch` and `reports_final_model`: which checkpoint a run reports. The
  paper protocol reports the final model (the papers select nothing on held-out
  data); the validation protocol the epoch with the best validation accuracy.

Nothing here knows about training loops, checkpoints or files.
"""
from typing import Any, Callable, Iterable

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from cnn.augment import normalize
from cnn.models import create_model
from cnn.models.layers import LayerSpec
from cnn.settings import Section, Setting, at_least, positive


def build(config: ml_collections.ConfigDict, num_classes: int, norm_groups: int = 1
          ) -> nn.Module:
  """The config's model: `config.model_kwargs` its architecture, `config.layers`
  its LayerSpec; `norm_groups` > 1: per-device BatchNorm statistics in training."""
  layers = config.layers
  spec = LayerSpec(dtype=layers.dtype, norm_groups=norm_groups,
                   conv_padding=layers.conv_padding, conv_algorithm=layers.conv_algorithm,
                   fusion_barrier=layers.fusion_barrier)
  return create_model(config.model, num_classes=num_classes, spec=spec, **config.model_kwargs)


CONFIG = Section("eval", "evaluation: the test accuracy, the predictor and the report", {
    "flip": Setting(False, "test-time augmentation: average the logits of each image and its "
                    "mirror image (evaluation, predictor, report)", example=True),
    "batch_size": Setting(500, "images per evaluation batch (the last one padded)", positive,
                          "> 0"),
    "report_image_index": Setting(0, "--mode=evaluate: the test image whose activations the "
                                  "report draws", at_least(0), ">= 0"),
}, renamed={"eval_flip": "flip", "eval_batch_size": "batch_size",
            "report_image_index": "report_image_index"})


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
