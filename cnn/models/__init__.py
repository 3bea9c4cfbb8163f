"""Model registry: every module in this package that defines `MODELS` (a dict
of name -> module factory) is picked up, so adding an architecture is one new
file here plus one config in `configs/`.

A model declares its architecture only; how its layers compute (dtype, the
conv, norm and pool factories, the barrier after residual blocks) is the
`LayerSpec` that `create_model` hands every factory as `spec` (layers.py),
so a new file needs no such fields of its own. Nothing in this package asks
which backend it runs on: `model_fn.build` decides that (cnn/kernels/).
"""
import functools
import importlib
import pkgutil
from typing import Callable

import flax.linen as nn

from cnn.errors import UserError, unknown_name
from cnn.models.layers import LayerSpec


@functools.cache
def registry() -> dict[str, Callable[..., nn.Module]]:
  """Name -> factory, collected from this package's modules."""
  found: dict[str, Callable[..., nn.Module]] = {}
  for info in pkgutil.iter_modules(__path__):
    module = importlib.import_module(f"{__name__}.{info.name}")
    for name, factory in getattr(module, "MODELS", {}).items():
      if name in found:
        raise ValueError(f"model {name!r} is defined twice (second in {info.name})")
      found[name] = factory
  return found


def create_model(name: str, *, num_classes: int, spec: LayerSpec = LayerSpec(),
                 **kwargs) -> nn.Module:
  """Builds a registered model computing as `spec` says; `kwargs` are its
  architecture options, from `config.model_kwargs`."""
  models = registry()
  if name not in models:
    raise unknown_name("model", name, models)
  try:
    return models[name](num_classes=num_classes, spec=spec, **kwargs)
  except TypeError as e:
    raise UserError(f"bad config.model_kwargs for {name!r}: {e}") from None
