"""Beyond accuracy: calibration, corruption and adversarial robustness of a trained model.

  calibration.py   ECE, adaptive ECE, NLL, Brier, reliability bins, temperature scaling
  corruptions.py   the 15 CIFAR-10-C corruptions x 5 severities (released files or generated)
  adversarial.py   FGSM and PGD (L-inf) in JAX through the model's own preprocessing

`evaluate` runs the sections `config.robustness.sections` names on a
`cnn.inference.predictor.Predictor`; `main.py --mode=evaluate` puts the result in
`<workdir>/report/robustness.json` and the report's pages, and `python -m cnn.robustness`
does the same for a published weights file.

A section is one registered object (`section.ReportSection`: what it computes, its table,
its figure and caption, its columns in the compare and results tables), in one file of this
package, and one line of `SECTIONS`; the name is then valid in `config.robustness.sections`,
its result lands in `robustness.json` under that name, and every page and table shows it
(docs/extending.md has a worked example).
"""
import time

import ml_collections
import numpy as np

from cnn.robustness import adversarial, calibration, corruptions
from cnn.robustness.section import Inputs, ReportSection
from cnn.schema import Section, Setting, at_least


# name -> the section (one file of this package each); run, shown and compared in this order.
SECTIONS: dict[str, ReportSection] = {
    s.name: s for s in (calibration.SECTION, corruptions.SECTION, adversarial.SECTION)}


def _known_sections(value: str) -> bool:
  return all(s.strip() in SECTIONS for s in value.split(",") if s.strip())


CONFIG = Section("robustness", "--mode=evaluate beyond accuracy (cnn/robustness/)", {
    "sections": Setting(",".join(SECTIONS), "comma-separated sections of SECTIONS ('' = "
                        "none). Calibration takes seconds; corruptions and attacks on all 10k "
                        "test images ~35 min for ResNet-20 on 2 CPU cores, so "
                        "--config.robustness.examples=1000 gives a quick look",
                        _known_sections, "comma-separated sections of " + ", ".join(SECTIONS)
                        + " ('' = none)", example="calibration"),
    "examples": Setting(0, "corruptions and attacks: the first N test images (0 = all; "
                        "calibration always uses the whole test split)", at_least(0),
                        ">= 0 (0 = the whole test split)", example=1000),
    "attack_eps": Setting((1, 2, 8), "FGSM/PGD L-inf radii, in 1/255 of the pixel range",
                          lambda v: len(v) > 0 and all(
                              isinstance(e, (int, float)) and not isinstance(e, bool)
                              and e >= 0 for e in v),
                          "a non-empty list of radii >= 0 in 1/255"),
    "pgd_steps": Setting(10, "PGD iterations (step eps/4, random start)", at_least(1), ">= 1"),
}, renamed={"robustness": "sections", "robustness_examples": "examples",
            "attack_eps": "attack_eps", "pgd_steps": "pgd_steps"})


def sections(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(s.strip() for s in config.robustness.sections.split(",") if s.strip())


def subset(images: np.ndarray, labels: np.ndarray, examples: int):
  return (images, labels) if examples <= 0 else (images[:examples], labels[:examples])


def evaluate(p, config: ml_collections.ConfigDict, test: tuple[np.ndarray, np.ndarray],
             held_out: tuple[np.ndarray, np.ndarray] | None, *, archive_dir: str = "",
             test_logits: np.ndarray | None = None) -> dict:
  """The robustness report of predictor `p` on the test split (uint8 images, labels);
  `held_out`: the validation split for temperature scaling (None: not fitted)."""
  images, labels = test
  chosen = sections(config)
  few_images, few_labels = subset(images, labels, int(config.robustness.examples))
  inputs = Inputs(images, labels, few_images, few_labels, held_out, config, archive_dir,
                  test_logits)
  out: dict = {"sections": list(chosen), "seconds": {}}
  for name in (n for n in SECTIONS if n in chosen):
    started = time.perf_counter()
    out[name] = SECTIONS[name].compute(p, inputs)
    out["seconds"][name] = time.perf_counter() - started
  return out
