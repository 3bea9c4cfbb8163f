"""The speedrun's optimiser (airbench94_muon's): Muon for the convolution
filters, SGD with Nesterov momentum for the rest, each group with its own
rate and a linear decay to 0, through `optax.multi_transform`.

| group | parameters | optimiser | rate | decay over |
|---|---|---|---|---|
| whiten_bias | the whitening layer's bias | SGD, momentum 0.85, Nesterov | 0.053 | its first 3 epochs, then frozen |
| norm_bias | BatchNorm offsets | the same | 0.053 | the run |
| head | the classifier | the same | 0.67 | the run |
| filters | 3x3 conv kernels | Muon, momentum 0.6, Nesterov | 0.24 | the run |

SGD's weight decay is PyTorch's coupled one, 2e-6 x batch size / the
group's initial rate (so the decay per step is 2e-6 x batch x the rate's
decay); the loss it sees is summed over the batch, not averaged (airbench's).
Muon (Jordan et al. 2024; optax.contrib has a general one): momentum, then
the update orthogonalised by 3 Newton-Schulz steps in bfloat16, and each
filter rescaled to norm sqrt(output channels) before its step.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: jnp.ndarray, steps: int = 3, eps: float = 1e-7) -> jnp.ndarray:
  """Newton-Schulz iteration towards U V^T of the matrix g = U S V^T (its
  singular values end near 1, between about 0.5 and 1.5), in bfloat16."""
  x = g.astype(jnp.bfloat16)
  x = x / (jnp.linalg.norm(x.astype(jnp.float32)).astype(jnp.bfloat16) + eps)
  wide = x.shape[0] > x.shape[1]
  if wide:
    x = x.T
  a, b, c = NS_COEFFS
  for _ in range(steps):
    m = x @ x.T
    x = a * x + (b * m + c * m @ m) @ x
  return x.T if wide else x


def filter_matrix(kernel: jnp.ndarray) -> jnp.ndarray:
  """An HWIO kernel as the (out, h * w * in) matrix Muon orthogonalises."""
  return kernel.reshape(-1, kernel.shape[-1]).T


class MuonState(NamedTuple):
  momentum: Any


def muon(learning_rate: optax.Schedule, momentum: float = 0.6, steps: int = 3
         ) -> optax.GradientTransformation:
  """airbench's Muon on HWIO kernels: the Nesterov momentum of the gradient,
  orthogonalised, times -rate; and each kernel first rescaled to norm
  sqrt(out channels) (the update includes that change)."""

  def init(params):
    return MuonState((jax.tree.map(jnp.zeros_like, params), jnp.zeros([], jnp.int32)))

  def update(grads, state, params):
    buffers, count = state.momentum
    buffers = jax.tree.map(lambda m, g: momentum * m + g, buffers, grads)
    rate = learning_rate(count)

    def step(g, m, p):
      nesterov = g + momentum * m
      direction = orthogonalize(filter_matrix(nesterov), steps).T.reshape(p.shape)
      rescaled = p * (jnp.sqrt(p.shape[-1]) / jnp.linalg.norm(p))
      return (rescaled - p) - rate * direction.astype(p.dtype)

    return (jax.tree.map(step, grads, buffers, params),
            MuonState((buffers, count + 1)))

  return optax.GradientTransformation(init, update)


def linear_to_zero(peak: float, steps: int) -> optax.Schedule:
  """peak x (1 - step / steps), 0 from `steps` on."""
  return lambda count: peak * jnp.maximum(0.0, 1.0 - count / steps)


def sgd(peak: float, steps: int, weight_decay: float) -> optax.GradientTransformation:
  """PyTorch's SGD (Nesterov, momentum 0.85) as airbench sets it up: coupled
  weight decay `weight_decay / peak` (added to the gradient), the rate
  decaying linearly from `peak` to 0 over `steps`."""
  return optax.chain(optax.add_decayed_weights(weight_decay / peak),
                     optax.sgd(linear_to_zero(peak, steps), momentum=0.85, nesterov=True))


def group_of(path: tuple, leaf: jnp.ndarray) -> str:
  """The optimiser group of a parameter, by its path in the params tree."""
  names = [getattr(k, "key", str(k)) for k in path]
  if names[-1] == "whiten_bias":
    return "whiten_bias"
  if names[0] == "head":
    return "head"
  if leaf.ndim == 4:
    return "filters"
  return "norm_bias"


def make_optimizer(batch_size: int, steps_per_epoch: int, total_steps: int, *,
                   whiten_bias_epochs: int = 3, bias_lr: float = 0.053, head_lr: float = 0.67,
                   filter_lr: float = 0.24) -> optax.GradientTransformation:
  """The four groups of the table above, for a run of `total_steps` steps."""
  decay = 2e-6 * batch_size
  whiten_steps = whiten_bias_epochs * steps_per_epoch
  return optax.multi_transform(
      {"whiten_bias": sgd(bias_lr, whiten_steps, decay),
       "norm_bias": sgd(bias_lr, total_steps, decay),
       "head": sgd(head_lr, total_steps, decay),
       "filters": muon(linear_to_zero(filter_lr, total_steps))},
      lambda params: jax.tree_util.tree_map_with_path(group_of, params))
