"""Calibration, corruption and adversarial robustness of a workdir or a published weights file.

  python -m cnn.robustness results/weights/resnet20_mnist_seed0.safetensors \\
      --record results/resnet20_mnist_seed0.json          # adds "robustness" to the record
  python -m cnn.robustness runs/r20 --examples 1000 --out /tmp/r20_robustness.json

`main.py --mode=evaluate` computes the same report for a workdir (into
`<workdir>/report/`); this command serves the weights in `results/`, which have no
workdir. The run's own config chooses the dataset, splits and attack radii; the flags
override the sections and the number of images. The data is read as training reads it
(`CNN_ARCHIVE_DIR`, tfds when installed).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from cnn.errors import UserError


def run(source: str, sections: str | None, examples: int | None, which: str) -> dict:
  from cnn import datasets, robustness  # pylint: disable=import-outside-toplevel
  from cnn.inference import predictor  # pylint: disable=import-outside-toplevel
  p = predictor.load(source, which)
  config = p.config.copy_and_resolve_references()
  config.unlock()
  if sections is not None:
    config.robustness.sections = sections
  if examples is not None:
    config.robustness.examples = examples
  data = datasets.open_dataset(config.data)
  held_out = (data.load_split(config.data.validation_split) if config.data.validation_split
              else None)
  report = robustness.evaluate(
      p, config, data.load_split(config.data.test_split), held_out,
      archive_dir=datasets.resolve_archive_dir(config.data.archive_dir))
  report["evaluated"] = {"source": source, "which": which, **{
      k: p.source.get(k) for k in ("step", "epoch") if k in p.source}}
  return report


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cnn.robustness", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", help="a workdir, or a weights file (*.safetensors)")
  parser.add_argument("--record", help="a results/*.json record to add the report to")
  parser.add_argument("--out", help="write the report (JSON) here")
  parser.add_argument("--sections", help="comma-separated: calibration,corruptions,adversarial")
  parser.add_argument("--examples", type=int,
                      help="corruptions and attacks on the first N test images (0 = all)")
  parser.add_argument("--which", default="best", choices=("best", "last"),
                      help="the workdir's checkpoint (ignored for a weights file)")
  args = parser.parse_args(argv)
  try:
    if args.record and not Path(args.record).is_file():
      raise UserError(f"{args.record} not found; record the run first "
                      "(python -m cnn.report.results_table record ...)")
    report = run(args.source, args.sections, args.examples, args.which)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = json.dumps(report, indent=2) + "\n"
  if args.out:
    Path(args.out).write_text(text)
  if args.record:
    entry = json.loads(Path(args.record).read_text())
    entry["robustness"] = report
    Path(args.record).write_text(json.dumps(entry, indent=2) + "\n")
  if not (args.out or args.record):
    sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
