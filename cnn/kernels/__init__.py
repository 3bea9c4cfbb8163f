"""The CPU's speed kernels, and the one rule that hands them to a model.

A model's layers are flax's by default (`cnn/models/layers.py`: XLA's
convolution, BatchNorm and max pool everywhere). On the CPU backend XLA is
slow at some shapes, so `for_backend` swaps in this package's pieces:

- `conv_algorithms.PlannedConv`: each convolution's forward pass and two
  gradients by the algorithm its shape runs fastest with (oneDNN's where
  built: `onednn.py`, native/onednn);
- `batchnorm.BatchNorm`: BatchNorm trained by oneDNN, its ReLU fused;
- `pool.max_pool`: max pools over non-overlapping windows as a reshape (a fast
  gradient);
- `barrier.fusion_barrier`: each residual block's output kept in memory.

Every piece gives the values of the layer it replaces (bitwise, or within
float rounding for the convolutions: tests/test_conv_algorithms.py), and
parameters are the same, so a checkpoint loads under either. Nothing under
`cnn/models/` imports this package: `model_fn.build` calls `for_backend`
once, with the backend it builds for.
"""
import dataclasses

from cnn.kernels import barrier, batchnorm, conv_algorithms, onednn, pool
from cnn.models.layers import LayerSpec

# config.layers.conv_algorithm: the rule with oneDNN where built, the rule
# without oneDNN, or XLA's convolution everywhere.
CONV_ALGORITHMS = ("auto", "builtin", "xla")


def for_backend(spec: LayerSpec, backend: str, conv_algorithm: str = "auto",
                fusion_barrier: bool = True) -> LayerSpec:
  """`spec` with this package's kernels where `backend` is "cpu" (unchanged
  elsewhere): convolutions by `conv_algorithm`'s rule, BatchNorm trained by
  oneDNN (with "auto", oneDNN built, one device, global BatchNorm, fp32/bf16),
  the reshape max pool, and the fusion barrier if `fusion_barrier`."""
  if backend != "cpu":
    return spec
  with_onednn = conv_algorithm == "auto" and onednn.available()
  conv, norm = spec.conv, spec.norm
  if conv_algorithm != "xla":
    conv = dataclasses.replace(conv, compute=conv_algorithms.PlannedConv(onednn=with_onednn))
  if with_onednn and norm.groups == 1 and onednn.supports(spec.dtype):
    norm = dataclasses.replace(norm, training=batchnorm.BatchNorm)
  return dataclasses.replace(
      spec, conv=conv, norm=norm, pool=pool.max_pool,
      barrier=barrier.fusion_barrier if fusion_barrier else spec.barrier)
