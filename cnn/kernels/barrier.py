"""The fusion barrier: a residual block's output kept in memory on the CPU
backend (what `model_fn.build` gives residual models as `LayerSpec.barrier`
there, unless `config.layers.fusion_barrier` is False)."""
import jax
import jax.numpy as jnp


def fusion_barrier(x: jnp.ndarray) -> jnp.ndarray:
  """Returns `x`, computed once and kept in memory, on the CPU backend.

  XLA:CPU's backward pass reads each convolution input transposed (batch
  dimension last) for the kernel gradient, and fuses the elementwise ops that
  made that input (BN, ReLU, the residual add) into the transpose. Through a
  chain of post-activation residual blocks, every block output is such an
  op of the previous one, so each transpose recomputes the whole stage so far:
  the cost grows with the square of the depth (measured with
  benchmarks/run.py: ResNet-56 v1 trains 1.8x faster with this barrier,
  ResNet-20 v1 1.2x). `lax.optimization_barrier` does not help: XLA:CPU strips
  it before fusion. A conditional is never fused, so its output is stored
  once; both branches return `x` unchanged, so the values are bit-identical.
  Other backends do not get it: a conditional there may cost a sync.
  """
  first = x.reshape(-1)[0]
  return jax.lax.cond(first == first, lambda t: t, lambda t: t * 1, x)
