"""CIFAR-10 to 94 % as fast as the record: airbench94_muon's recipe (Jordan
2024, arXiv 2404.00498; KellerJordan/cifar10-airbench) written in JAX.

  python -m cnn.speedrun --seeds 25 --out speedrun.json

net.py     the network: frozen patch-whitening layer, identity-initialised
           convs, BatchNorm without scale, GELU
data.py    alternating flips and 2-pixel translations, for a whole epoch at once
optim.py   Muon for the filters, Nesterov SGD for the rest, linear decays
train.py   one run: a jitted step per batch, translate + flip TTA, the timer
profile.py a traced run's device time by program and kernel (--profile)
__main__   N seeds back to back on one device: mean and spread of accuracy and
           seconds, compilation apart

The recipe has its own loop rather than main.py's: the record is timed on a
run with no checkpoints, progress lines or per-epoch evaluation, and its
optimiser groups do not fit config.optim.
"""
import statistics


def summary(values: list[float]) -> dict:
  """Mean, sample std, median, min, max and n of runs' values (ours and, in
  tools/box_airbench.py, airbench's)."""
  return {"mean": statistics.fmean(values),
          "std": statistics.stdev(values) if len(values) > 1 else 0.0,
          "median": statistics.median(values), "min": min(values), "max": max(values),
          "n": len(values)}
