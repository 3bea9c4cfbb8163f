"""Beyond accuracy: calibration, corruption and adversarial robustness of a trained model.

  calibration.py   ECE, adaptive ECE, NLL, Brier, reliability bins, temperature scaling
  corruptions.py   the 15 CIFAR-10-C corruptions x 5 severities (released files or generated)
  adversarial.py   FGSM and PGD (L-inf) in JAX through the model's own preprocessing

`evaluate` runs the sections a config asks for on a `cnn.inference.predictor.Predictor`;
`main.py --mode=evaluate` puts the result in `<workdir>/report/robustness.json` and the
report's pages, and `python -m cnn.robustness` does the same for a published weights file.

Config switches (configs/default.py): `robustness` (sections, comma-separated),
`robustness_examples` (the first N test images for corruptions and attacks; 0 = all),
`attack_eps` (in 1/255) and `pgd_steps`. Calibration always uses the whole test split.
"""
import logging
import time

import ml_collections
import numpy as np

from cnn.robustness import adversarial, calibration, corruptions

SECTIONS = ("calibration", "corruptions", "adversarial")
DEFAULTS = {"robustness": ",".join(SECTIONS), "robustness_examples": 0,
            "attack_eps": (1, 2, 8), "pgd_steps": 10}


def setting(config: ml_collections.ConfigDict, key: str):
  """The config's value, or the default for runs recorded before the key existed."""
  return config.get(key, DEFAULTS[key])


def sections(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(s.strip() for s in str(setting(config, "robustness")).split(",") if s.strip())


def subset(images: np.ndarray, labels: np.ndarray, examples: int):
  return (images, labels) if examples <= 0 else (images[:examples], labels[:examples])


def evaluate(p, config: ml_collections.ConfigDict, test: tuple[np.ndarray, np.ndarray],
             held_out: tuple[np.ndarray, np.ndarray] | None, *, archive_dir: str = "",
             test_logits: np.ndarray | None = None) -> dict:
  """The robustness report of predictor `p` on the test split (uint8 images, labels);
  `held_out`: the validation split for temperature scaling (None: not fitted)."""
  images, labels = test
  chosen = sections(config)
  examples = int(setting(config, "robustness_examples"))
  seed = int(config.get("seed", 0))
  out: dict = {"sections": list(chosen), "seconds": {}}
  if "calibration" in chosen:
    started = time.perf_counter()
    logits = p.logits(images) if test_logits is None else test_logits
    held = None if held_out is None else (p.logits(held_out[0]), held_out[1])
    out["calibration"] = calibration.report(logits, labels, held,
                                            config.get("validation_split", ""))
    out["seconds"]["calibration"] = time.perf_counter() - started
  few_images, few_labels = subset(images, labels, examples)
  if "corruptions" in chosen:
    started = time.perf_counter()
    released = (corruptions.released_dir(archive_dir)
                if config.dataset == "cifar10" and config.get("test_split") == "test" else None)
    out["corruptions"] = corruptions.report(p.logits, few_images, few_labels,
                                            released=released, seed=seed)
    out["corruptions"]["clean_accuracy"] = float(
        (p.logits(few_images).argmax(-1) == few_labels).mean())
    out["seconds"]["corruptions"] = time.perf_counter() - started
    logging.info("corruptions: mean accuracy %.4f (%s)", out["corruptions"]["mean"],
                 out["corruptions"]["source"])
  if "adversarial" in chosen:
    started = time.perf_counter()
    out["adversarial"] = adversarial.report(p, few_images, few_labels,
                                            tuple(setting(config, "attack_eps")),
                                            int(setting(config, "pgd_steps")), seed)
    out["seconds"]["adversarial"] = time.perf_counter() - started
  return out

