"""`cnn.inference.predictor.load`: a trained workdir as a function, with only the
evaluation variables restored, predicting exactly what evaluation measured."""
import json

import numpy as np
import pytest

from cnn import datasets
from cnn.inference import predictor
from cnn.errors import UserError


def test_a_workdir_predicts_what_evaluation_measured(tiny_run, mnist):
  workdir, _ = tiny_run
  results = json.loads((workdir / "results.json").read_text())
  p = predictor.load(str(workdir))
  assert set(p.variables) == {"params", "batch_stats"}  # no optimizer state
  assert p.source["epoch"] == results["best_epoch"]
  assert p.class_names == tuple(str(i) for i in range(10))
  assert p.image_shape == (28, 28, 1) and p.batch_size == 1000
  images, labels = mnist.load_split("test")
  probabilities = p.probabilities(images)
  assert probabilities.shape == (10_000, 10)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
  accuracy = float(np.mean(probabilities.argmax(axis=1) == labels))
  assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-9)
  # one image, no batch axis; the same logits as inside a batch
  np.testing.assert_array_equal(p.logits(images[7])[0], p.logits(images[:10])[7])


def test_last_checkpoint_and_mistakes(tiny_run, tmp_path):
  workdir, _ = tiny_run
  last = predictor.load(str(workdir), "last")
  assert last.source["step"] == 64
  with pytest.raises(UserError, match="unknown checkpoint choice 'newest'; valid"):
    predictor.load(str(workdir), "newest")
  with pytest.raises(UserError, match=f"no checkpoint in {tmp_path}/checkpoints; train first"):
    predictor.load(str(tmp_path))
  with pytest.raises(UserError, match=r"images of shape \(32, 32, 3\) given, the model takes "
                                      r"\(28, 28, 1\)"):
    last.logits(np.zeros((2, 32, 32, 3), np.uint8))
  other = last.config.copy_and_resolve_references()
  last.check_config(other)  # the run's own config is fine
  other.model = "vgg11"
  with pytest.raises(UserError, match="incompatible checkpoint \\(model: checkpoint has "
                                      "'resnet8_v1', config has 'vgg11'\\)"):
    last.check_config(other)


def test_softmax_rows_sum_to_one_even_for_large_logits():
  p = predictor.softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
  np.testing.assert_allclose(p, [[0.5, 0.5], [0.25, 0.75]])
