"""Checks a config before anything expensive happens.

Each setting's own rule lives with its default and meaning in the section
that declares it (`cnn/settings.py` says where); `validate_config` applies
them all, refuses unknown keys (a typo in a config file would otherwise be
ignored) and names the new place of a flat key from an older config, then
checks what involves several settings at once.
"""
import ml_collections

from cnn import checkpoint, model_fn, settings
from cnn.errors import UserError


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError with the fix, or returns None."""
  settings.check(config)
  optim = config.optim
  if config.batch_size % optim.grad_accum_steps:
    raise UserError(f"config.optim.grad_accum_steps={optim.grad_accum_steps} must divide "
                    f"config.batch_size={config.batch_size}; e.g. "
                    "--config.optim.grad_accum_steps=1")
  if optim.sam_rho and optim.grad_accum_steps > 1:
    raise UserError("config.optim.sam_rho and config.optim.grad_accum_steps > 1 do not combine "
                    "(SAM needs the whole batch's gradient twice); set "
                    "--config.optim.grad_accum_steps=1")
  checkpoint.check_every_epochs(config.checkpoint.every_epochs,
                                model_fn.reports_final_model(config.protocol))
  if config.protocol == "paper" and config.data.validation_split:
    raise UserError("config.protocol='paper' reports the final model and holds nothing out: "
                    "set --config.data.validation_split='' or use --config.protocol=validation")
