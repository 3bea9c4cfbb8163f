"""Building blocks shared by every model family.

Models never construct `nn.Conv`/`nn.BatchNorm` with their own defaults: they
receive `conv`, `norm` and `act` from `make_layers`, so one block class serves
fp32 and bf16, training and evaluation (the google/flax ImageNet example's
pattern).
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any

# He et al. (2015, "Delving deep into rectifiers") initialisation, fan-out
# variant as in torchvision: keeps activations' variance stable through ReLUs.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def make_layers(train: bool, dtype: Any) -> tuple[ModuleDef, ModuleDef, Callable]:
  """Returns (conv, norm, act) factories for a forward pass.

  BatchNorm uses PyTorch's defaults (momentum 0.1 == flax momentum 0.9,
  eps 1e-5), which the published CIFAR recipes were tuned with.
  """
  conv = functools.partial(
      nn.Conv, use_bias=False, padding="SAME", kernel_init=he_normal, dtype=dtype)
  norm = functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
      dtype=dtype)
  return conv, norm, nn.relu


def classifier_head(x: jnp.ndarray, num_classes: int, dtype: Any) -> jnp.ndarray:
  """Dense layer to class logits, returned in float32 for a stable softmax."""
  return nn.Dense(num_classes, dtype=dtype)(x).astype(jnp.float32)
