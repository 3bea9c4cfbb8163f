"""BatchNorm trained by oneDNN on the CPU (cnn/kernels/onednn.py), with the
ReLU that follows fused into the same pass.

`model_fn.build` gives it to a model as `Norm(training=BatchNorm)` where
oneDNN is built, the backend is the CPU and BatchNorm is global: with bf16
compute it makes the ResNet-20 step 1.3x faster (760 vs 582 images/s,
2-core AMD EPYC); in fp32 the two are within noise (benchmarks/README.md).
Evaluation uses `nn.BatchNorm` (`Norm`), which reads the same variables.
"""
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn.kernels import onednn
from cnn.models.layers import (EPSILON, MOMENTUM, batchnorm_variables,
                               update_running_averages)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` in training (batch statistics), computed by oneDNN on
  images (N, H, W, C) and as flax computes it on features (N, C); the same
  parameters, statistics, names (`BatchNorm_<i>` when a block leaves it
  unnamed) and momentum, so checkpoints are interchangeable."""
  momentum: float = MOMENTUM
  epsilon: float = EPSILON
  dtype: Any = jnp.float32
  use_scale: bool = True
  scale_init: Callable = nn.initializers.ones
  fuses_relu = True  # layers.norm_act calls it with relu=True for a BN-ReLU

  @nn.compact
  def __call__(self, x: jnp.ndarray, relu: bool = False) -> jnp.ndarray:
    """BatchNorm of x; with `relu`, then a ReLU (in the same oneDNN pass on images)."""
    scale, bias, ra_mean, ra_var = batchnorm_variables(self, x.shape[-1])
    if x.ndim == 4:
      y, mean, var = onednn.batch_norm(x.astype(self.dtype), scale, bias, self.epsilon, relu)
    else:  # flax's computation (a BatchNorm on features, not images)
      t = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(t, axes)
      var = jnp.maximum(0.0, jnp.mean(jnp.square(t), axes) - jnp.square(mean))
      y = ((t - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias).astype(self.dtype)
      y = nn.relu(y) if relu else y
    update_running_averages(self, ra_mean, ra_var, mean, var)
    return y
