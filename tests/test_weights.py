"""Published weights: `results_table record` ships a run's evaluation weights
with their checksum; `predictor.load` takes the file and predicts exactly what
the workdir predicts; the weights shipped in results/ reproduce their
recorded test accuracy."""
import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from cnn import datasets
from cnn.report import results_table
from cnn.errors import UserError
from cnn.inference import predictor, weights

SHIPPED = sorted(p for p in results_table.RESULTS_DIR.glob("*.json")
                 if "weights" in json.loads(p.read_text()))
PUBLISHED = sorted(p for p in results_table.RESULTS_DIR.glob("*.json")
                   if "weights_published" in json.loads(p.read_text()))


def test_record_ships_weights_that_predict_like_the_workdir(tiny_run, mnist, tmp_path):
  workdir, _ = tiny_run
  [path] = results_table.record(str(workdir), "tiny_mnist", "2-core CPU", "python main.py ...",
                                tmp_path)
  entry = json.loads(path.read_text())
  shipped = entry["weights"]
  file = tmp_path / shipped["file"]
  assert shipped["file"] == "weights/tiny_mnist_seed0.safetensors"
  assert shipped["bytes"] == file.stat().st_size < weights.GIT_SIZE_LIMIT_BYTES
  assert shipped["sha256"] == weights.sha256(file)
  from_file = predictor.load(str(file), sha256=shipped["sha256"])
  from_workdir = predictor.load(str(workdir))
  assert shipped["step"] == from_workdir.source["step"]
  images, labels = mnist.load_split("test")
  np.testing.assert_array_equal(from_file.logits(images), from_workdir.logits(images))
  assert from_file.class_names == from_workdir.class_names
  assert from_file.source["test_accuracy"] == entry["test_accuracy"]
  assert predictor.load(str(file)).source == from_file.source  # the loader takes files too
  assert "|" in results_table.render(tmp_path)

  file.write_bytes(file.read_bytes()[:-1] + b"\0")  # one byte changed
  with pytest.raises(UserError, match="does not match its recorded SHA-256"):
    predictor.load(str(file), sha256=shipped["sha256"])
  (tmp_path / "not.safetensors").write_text("{}")
  with pytest.raises(UserError, match="cannot be read"):
    predictor.load(str(tmp_path / "not.safetensors"))


def test_the_same_weights_always_give_the_same_file(tiny_run, tmp_path):
  """safetensors writes the header's metadata in a new random order on every
  save (safetensors#584): `weights.save` sorts the header, so one checkpoint
  gives one SHA-256 however often it is recorded, and the file still loads
  to the same arrays."""
  workdir, _ = tiny_run
  p = predictor.load(str(workdir))
  saved = [weights.save(p, tmp_path / f"{i}.safetensors", {"name": "tiny_mnist"})
           for i in range(6)]
  assert all(s == saved[0] for s in saved), saved
  loaded = predictor.load(str(tmp_path / "0.safetensors")).variables
  by_name = weights._by_name  # pylint: disable=protected-access
  assert by_name(loaded).keys() == by_name(p.variables).keys()
  for name, array in by_name(p.variables).items():
    np.testing.assert_array_equal(by_name(loaded)[name], array)


def test_record_publishes_weights_outside_git_with_their_checksum(tiny_run, tmp_path):
  """--publish-dir: a file over the git limit goes there, not to
  results/weights/; the JSON keeps its size and SHA-256; one under it stays in
  git; without --publish-dir an oversized file is refused with nothing written;
  a directory inside the repository is refused."""
  workdir, _ = tiny_run
  results, published = tmp_path / "results", tmp_path / "published"
  record = functools.partial(results_table.record, str(workdir), "tiny_mnist", "2-core CPU",
                             "python main.py ...", results)
  [path] = record(publish_dir=published, git_limit_bytes=0)
  entry = json.loads(path.read_text())
  assert "weights" not in entry and not (results / "weights").exists()
  kept = entry["weights_published"]
  assert kept["file"] == "tiny_mnist_seed0.safetensors"
  assert kept["sha256"] == weights.sha256(published / kept["file"])
  assert kept["bytes"] == (published / kept["file"]).stat().st_size
  assert predictor.load(str(published / kept["file"]), sha256=kept["sha256"]).source["step"] \
      == kept["step"]
  assert f"outside git (SHA-256 {kept['sha256'][:12]}…)" in results_table.render(results)

  path.unlink()
  with pytest.raises(UserError, match=r"over the 0 MiB kept in git; record with --publish-dir"):
    record(git_limit_bytes=0)
  assert not path.exists() and not (results / "weights").exists()

  (published / kept["file"]).unlink()
  [path] = record(publish_dir=published)  # a tiny net: under the limit, kept in git
  assert json.loads(path.read_text())["weights"]["file"] == "weights/tiny_mnist_seed0.safetensors"
  assert (results / "weights" / "tiny_mnist_seed0.safetensors").is_file()
  assert not any(published.iterdir())

  inside = results_table.RESULTS_DIR / "weights-elsewhere"
  with pytest.raises(UserError, match="inside the repository"):
    record(publish_dir=inside)
  assert not inside.exists()


def reproduces_its_test_accuracy(entry: dict, file, sha256: str, archive_dir, tfds_dir) -> None:
  """Up to one image of 10,000: XLA's CPU code differs slightly between
  processors (measured here: equal)."""
  p = predictor.load(str(file), sha256=sha256)
  source = datasets.open_source(datasets.get_spec(entry["dataset"]), tfds_dir, archive_dir)
  images, labels = source.load_split("test")
  accuracy = float(np.mean(p.logits(images).argmax(-1) == labels))
  assert accuracy == pytest.approx(entry["test_accuracy"], abs=1e-4 + 1e-9)


@pytest.mark.parametrize("results_file", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_weights_reproduce_their_recorded_test_accuracy(results_file, archive_dir,
                                                                tfds_dir):
  entry = json.loads(results_file.read_text())
  reproduces_its_test_accuracy(entry, results_table.RESULTS_DIR / entry["weights"]["file"],
                               entry["weights"]["sha256"], archive_dir, tfds_dir)


@pytest.mark.published
@pytest.mark.parametrize("results_file", PUBLISHED, ids=[p.stem for p in PUBLISHED])
def test_published_weights_reproduce_their_recorded_test_accuracy(results_file, archive_dir,
                                                                  tfds_dir):
  """The weights too large for git, from a copy in $CNN_PUBLISHED_WEIGHTS."""
  entry = json.loads(results_file.read_text())
  kept = entry["weights_published"]
  where = os.environ.get("CNN_PUBLISHED_WEIGHTS")
  if not where or not (Path(where) / kept["file"]).is_file():
    pytest.fail(f"set CNN_PUBLISHED_WEIGHTS to a directory holding {kept['file']} "
                f"({kept['bytes'] / 1e6:.1f} MB, SHA-256 {kept['sha256']})")
  reproduces_its_test_accuracy(entry, Path(where) / kept["file"], kept["sha256"], archive_dir,
                               tfds_dir)


def test_every_measured_row_ships_its_weights():
  """Rows measured since weights ship; the ones before, whose checkpoints are
  gone, are listed in results/README.md."""
  for path in results_table.RESULTS_DIR.glob("*.json"):
    entry = json.loads(path.read_text())
    assert "weights" in entry or "weights_published" in entry or entry.get("weights_missing"), \
        path.name


def test_the_inference_and_report_layers_import_no_training_and_no_circle():
  """`weights` reads files and knows no model; `predictor` builds models from
  them (through cnn.model_fn); nothing in inference/ or report/ imports
  cnn.train."""
  import ast  # pylint: disable=import-outside-toplevel
  root = results_table.RESULTS_DIR.parent / "cnn"

  def imported(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module:
        names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
      elif isinstance(node, ast.Import):
        names |= {a.name for a in node.names}
    return names

  assert not imported(root / "inference" / "weights.py") & {
      "cnn.inference.predictor", "cnn.model_fn", "cnn.train", "cnn.models"}
  for path in [*(root / "inference").glob("*.py"), *(root / "report").glob("*.py")]:
    assert "cnn.train" not in imported(path), path
