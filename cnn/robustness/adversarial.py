"""Adversarial accuracy under L-inf attacks, in JAX, through the model's own preprocessing.

Images live in pixel space [0, 1] (uint8 / 255); the attack perturbs pixels and the
predictor's normalisation (and its flip averaging, when the run evaluates with
`config.eval.flip`) is part of the attacked function, so the gradient is that of the
logits evaluation reports. Cross-entropy loss, the model in inference mode (BatchNorm
moving averages).

  FGSM  Goodfellow et al. 2015: x + eps * sign(grad), clipped to [0, 1].
  PGD   Madry et al. 2018: a uniform random start in the eps-ball, then `steps` steps of
        size eps/4 (their CIFAR-10 recipe: eps 8/255, step 2/255) of the signed gradient,
        projected onto the ball and [0, 1] after each. An example counts as robust only if
        the start and every iterate are classified correctly: with a fixed step size the
        iterates of k steps are a prefix of those of k + 1 steps, so more steps can never
        raise the accuracy, and eps = 0 gives the clean accuracy exactly.

The random start derives from (seed, eps index, batch index). Perturbed images stay
float (not re-quantised to uint8), as in both papers.
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn.robustness.section import MISSING, Column, Inputs, ReportSection, Table, percent

STEP_FRACTION = 0.25  # PGD step size = eps * STEP_FRACTION


def logits_fn(p):
  """(variables, pixels in [0, 1]) -> logits, with the predictor's normalisation and flip."""
  mean = jnp.asarray(p.mean, jnp.float32)
  std = jnp.asarray(p.std, jnp.float32)

  def logits(variables, pixels):
    x = (pixels - mean) / std
    y = p.model.apply(variables, x, train=False)
    if p.flip:
      y = (y + p.model.apply(variables, x[:, :, ::-1], train=False)) / 2
    return y.astype(jnp.float32)
  return logits


def _loss_and_correct(logits, variables, pixels, labels):
  y = logits(variables, pixels)
  log_probs = jax.nn.log_softmax(y)
  loss = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1).sum()
  return loss, y.argmax(-1) == labels


@functools.partial(jax.jit, static_argnums=0)
def _fgsm(logits, variables, pixels, labels, eps):
  """Per-example robust (bool): right on the clean image and after the FGSM step."""
  grad_fn = jax.grad(functools.partial(_loss_and_correct, logits), argnums=1, has_aux=True)
  gradient, clean = grad_fn(variables, pixels, labels)
  adversarial = jnp.clip(pixels + eps * jnp.sign(gradient), 0.0, 1.0)
  _, correct = _loss_and_correct(logits, variables, adversarial, labels)
  return clean & correct


@functools.partial(jax.jit, static_argnums=0)
def _pgd(logits, variables, pixels, labels, key, steps, eps):
  """Per-example robust (bool): right at the random start and at every PGD iterate.
  `steps` is traced (a while loop), so every step count shares one compilation."""
  grad_fn = jax.grad(functools.partial(_loss_and_correct, logits), argnums=1, has_aux=True)
  lo, hi = jnp.clip(pixels - eps, 0.0, 1.0), jnp.clip(pixels + eps, 0.0, 1.0)
  start = pixels + jax.random.uniform(key, pixels.shape, jnp.float32, -eps, eps)

  def step(_, carry):
    x, robust = carry
    gradient, correct = grad_fn(variables, x, labels)
    x = jnp.clip(x + STEP_FRACTION * eps * jnp.sign(gradient), lo, hi)
    return x, robust & correct

  x, robust = jax.lax.fori_loop(0, steps, step,
                                (jnp.clip(start, lo, hi), jnp.ones(labels.shape, bool)))
  _, correct = _loss_and_correct(logits, variables, x, labels)
  return robust & correct


class Attacker:
  """A predictor's logits as a function of pixels, compiled once per attack kind."""

  def __init__(self, p):
    self.logits = logits_fn(p)
    self.variables = p.variables
    self.batch_size = p.batch_size

  def robust_correct(self, images: np.ndarray, labels: np.ndarray, eps: float, steps: int,
                     seed: int, eps_index: int = 0) -> np.ndarray:
    """(N,) bool: classified correctly under the attack (steps 0 = FGSM), in batches of
    the predictor's batch size, the last one zero-padded."""
    out = []
    size = min(self.batch_size, max(len(images), 1))
    for batch, start in enumerate(range(0, len(images), size)):
      chunk = np.asarray(images[start:start + size], np.float32) / np.float32(255.0)
      chunk_labels = np.asarray(labels[start:start + size], np.int32)
      real = len(chunk)
      if real < size:
        chunk = np.concatenate([chunk, np.zeros((size - real, *chunk.shape[1:]), np.float32)])
        chunk_labels = np.concatenate([chunk_labels, np.zeros(size - real, np.int32)])
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), eps_index), batch)
      x, y, eps_ = jnp.asarray(chunk), jnp.asarray(chunk_labels), jnp.float32(eps)
      robust = (_fgsm(self.logits, self.variables, x, y, eps_) if steps == 0 else
                _pgd(self.logits, self.variables, x, y, key, jnp.int32(steps), eps_))
      out.append(np.asarray(robust)[:real])
    return np.concatenate(out) if out else np.zeros((0,), bool)


def eps_name(eps_255: float) -> str:
  return f"{eps_255:g}/255"


def report(p, images: np.ndarray, labels: np.ndarray, eps_255: Sequence[float],
           pgd_steps: int, seed: int) -> dict:
  """Accuracy under FGSM and PGD at each eps (in 1/255 units)."""
  out = {"examples": int(len(labels)), "norm": "linf", "pgd_steps": int(pgd_steps),
         "pgd_step_size": f"eps * {STEP_FRACTION}", "pgd_random_start": True,
         "fgsm": {}, "pgd": {}}
  attacker = Attacker(p)
  for i, e in enumerate(eps_255):
    eps = float(e) / 255.0
    for kind, steps in (("fgsm", 0), ("pgd", pgd_steps)):
      out[kind][eps_name(e)] = float(
          attacker.robust_correct(images, labels, eps, steps, seed, i).mean())
  return out


# --- the report's section -----------------------------------------------------------------

def compute(p, x: Inputs) -> dict:
  """FGSM and PGD on the first `robustness.examples` test images, at the
  config's radii and PGD steps."""
  settings = x.config.robustness
  return report(p, x.few_images, x.few_labels, tuple(settings.attack_eps),
                int(settings.pgd_steps), x.config.seed)


def table(adv: dict) -> Table:
  header = ["eps (L-inf, pixels in [0, 1])", "FGSM acc %", f"PGD-{adv['pgd_steps']} acc %"]
  rows = [[eps, f"{100 * adv['fgsm'][eps]:.2f}", f"{100 * adv['pgd'][eps]:.2f}"]
          for eps in adv["fgsm"]]
  note = (f"{adv['examples']} test images; PGD: random start, step {adv['pgd_step_size']}, "
          "robust only if no iterate is misclassified.")
  return "Adversarial robustness", note, header, rows, 1


def _accuracy(adv: dict | None, attack: str, eps: str) -> float | None:
  return ((adv or {}).get(attack) or {}).get(eps)


def _attacks_cell(adv: dict | None) -> str:
  if not adv:
    return MISSING
  return " / ".join(percent(_accuracy(adv, attack, eps))
                    for attack, eps in (("fgsm", "2/255"), ("pgd", "2/255"), ("pgd", "8/255")))


SECTION = ReportSection(
    "adversarial", compute, table,
    compare_columns=(
        Column("PGD 2/255 %", "pgd_2", lambda a: _accuracy(a, "pgd", "2/255"), percent),
        Column("PGD 8/255 %", "pgd_8", lambda a: _accuracy(a, "pgd", "8/255"), percent)),
    results_columns=(
        ("FGSM 2/255 / PGD 2/255 / PGD 8/255 acc %", _attacks_cell, False),
        ("attacked images", lambda a: f"{a['examples']:,}" if a else MISSING, True)))

