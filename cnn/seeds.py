"""Seed sweeps, the light half: the `sweep` config section, seed lists and the
statistics of a sweep's results (cnn/sweep.py trains them).

`config.sweep.seeds = "0-4"` trains seeds 0..4 as one job, each exactly the
run that seed would be alone, in `<workdir>/seed_<s>/`; the job's
`<workdir>/sweep.json` holds every seed's test accuracy and their mean,
standard deviation, range and 95 % Student-t interval (`summary`), and
`welch` tests whether two sweeps differ. Only numpy and (for the t
quantiles) scipy are imported, late, so `cnn.report.compare` answers at once.
"""
import math
import re
from typing import Sequence

import ml_collections

from cnn.errors import UserError
from cnn.schema import Section, Setting, at_least, defaults

PLACEMENTS = ("auto", "vmap", "sequential")
SEEDS_FORMAT = "e.g. '0-4' or '0,3,7' or '0-2,9'"


def _parses(text: str) -> bool:
  if not text:
    return True  # no sweep
  try:
    parse_seeds(text)
  except UserError:
    return False
  return True


CONFIG = Section("sweep", "several seeds as one job (cnn/sweep.py)", {
    "seeds": Setting("", "train these seeds as one job, each exactly the run that seed would be "
                     "alone, in <workdir>/seed_<s>/, with <workdir>/sweep.json summarising them "
                     f"({SEEDS_FORMAT}); '' = the one run of config.seed", _parses,
                     "a list of distinct seeds >= 0 ('0-4', '0,3,7', '0-2,9')", example="0-4"),
    "placement": Setting("auto", "how the seeds share the devices: 'vmap' = trained together, "
                         "stacked on a leading seed axis of the train state (on a (seed, data) "
                         "device mesh); 'sequential' = one after another, each on every device; "
                         "'auto' = vmap on GPU/TPU, sequential on the CPU (where stacking gains "
                         "nothing: docs/experiments.md)", choices=PLACEMENTS),
    "seed_devices": Setting(0, "vmap: the devices along the mesh's seed axis (the seeds are "
                            "split among them, each seed data-parallel over the rest); 0 = the "
                            "largest that divides both the devices and the seeds", at_least(0),
                            ">= 0", example=4),
})


def parse_seeds(text: str) -> list[int]:
  """'0-2,7' -> [0, 1, 2, 7]; UserError (one line) for anything else."""
  seeds: list[int] = []
  for part in text.replace(" ", "").split(","):
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
    if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
      raise UserError(f"config.sweep.seeds={text!r} is not a seed list; {SEEDS_FORMAT}")
    low, high = int(m.group(1)), int(m.group(2) or m.group(1))
    seeds.extend(range(low, high + 1))
  if len(set(seeds)) != len(seeds):
    raise UserError(f"config.sweep.seeds={text!r} names a seed twice; {SEEDS_FORMAT}")
  return seeds


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """One seed's config: exactly the config of that seed's run alone (the
  `sweep` section at its defaults), so its workdir and results.json are that
  run's."""
  one = config.copy_and_resolve_references()
  one.seed = seed
  one.sweep = defaults(CONFIG)
  return one


def t_quantile(p: float, dof: int) -> float:
  """The p-quantile of Student's t with `dof` degrees of freedom."""
  from scipy import stats  # pylint: disable=import-outside-toplevel (seconds to import)
  return float(stats.t.ppf(p, dof))


def summary(values: Sequence[float], confidence: float = 0.95) -> dict:
  """n, mean, sample standard deviation, min, max and the two-sided Student-t
  interval of the mean; std and the interval are None for n < 2 (one seed
  says nothing about the spread)."""
  n = len(values)
  if n == 0:
    raise ValueError("no values")
  mean = sum(values) / n
  out = {"n": n, "mean": mean, "std": None, "min": min(values), "max": max(values),
         "confidence": confidence, "interval": None}
  if n >= 2:
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    out.update(std=std, interval=[mean - half, mean + half])
  return out


def welch(a: Sequence[float], b: Sequence[float]) -> dict:
  """Welch's two-sample t-test (unequal variances) of two sets of seeds:
  t, its Welch-Satterthwaite degrees of freedom and the two-sided p-value;
  `p` is None, with the reason, when either side has fewer than 2 seeds or
  neither varies."""
  na, nb = len(a), len(b)
  if na < 2 or nb < 2:
    return {"t": None, "dof": None, "p": None,
            "reason": f"needs at least 2 seeds on each side (have {na} and {nb})"}
  ma, mb = sum(a) / na, sum(b) / nb
  va = sum((x - ma) ** 2 for x in a) / (na - 1) / na
  vb = sum((x - mb) ** 2 for x in b) / (nb - 1) / nb
  if va + vb == 0:
    return {"t": None, "dof": None, "p": None,
            "reason": "every seed on both sides has the same value"}
  t = (ma - mb) / math.sqrt(va + vb)
  dof = (va + vb) ** 2 / ((va ** 2 / (na - 1) if va else 0) + (vb ** 2 / (nb - 1) if vb else 0))
  from scipy import stats  # pylint: disable=import-outside-toplevel
  return {"t": t, "dof": dof, "p": float(2 * stats.t.sf(abs(t), dof)), "reason": None}
