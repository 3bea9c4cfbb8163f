"""`python -m cnn.inference.export`: StableHLO, SavedModel, TFLite and ONNX
exports of a trained CIFAR-10 model (with test-time flips), each run by its
own runtime on 1,000 real test images and compared with JAX's logits."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from cnn import datasets
from cnn.inference import export, predictor
from cnn.models import create_model
from cnn import kernels
from cnn.models.layers import LayerSpec

# Largest |logit difference| from JAX allowed per export (float32 logits of
# magnitude ~10); docs/inference.md "Export" quotes the measured values.
TOLERANCE = {"stablehlo": 1e-4, "savedmodel": 1e-4, "tflite": 1e-4, "onnx": 1e-4}


@pytest.mark.slow
def test_every_export_matches_jax_on_real_test_images(tiny_cifar_run, data_env, cifar10,
                                                      tmp_path):
  out = tmp_path / "exports"
  result = subprocess.run([sys.executable, "-m", "cnn.inference.export", str(tiny_cifar_run),
                           f"--out={out}"], cwd=REPO, env=data_env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((out / "export.json").read_text())
  assert summary["flip"] is True and summary["input"] == {"dtype": "uint8",
                                                          "shape": ["N", 32, 32, 3]}
  assert set(summary["exports"]) == set(export.FORMATS)
  for name, measured in summary["exports"].items():
    assert measured["images"] == 1000
    assert measured["max_abs_logit_difference"] < TOLERANCE[name], (name, measured)
    assert measured["top1_agreement"] == 1.0, (name, measured)
    assert f"{name}: {out / measured['path']}: max |logit difference|" in result.stdout
  # Any batch size: 7 images the check did not use, through each runtime again.
  images = cifar10.load_split("test[2000:2007]")[0]
  reference = predictor.load(str(tiny_cifar_run)).logits(images)
  for name, (_, run) in export.FORMATS.items():
    got = run(out / summary["exports"][name]["path"], images)
    np.testing.assert_allclose(got, reference, atol=TOLERANCE[name], rtol=0, err_msg=name)


def test_portable_model_changes_only_the_layer_spec():
  """Exports compute with flax's own layers (XLA's convolutions, none of the CPU's
  kernels); nothing else of the model (its architecture, its dtype, its parameters)
  changes."""
  model = create_model("resnet8_v1", num_classes=10, shortcut="zero_pad",
                       spec=kernels.for_backend(LayerSpec(dtype="bfloat16"), "cpu"))
  exported = export.portable(model)
  assert exported.spec == LayerSpec(dtype="bfloat16")
  assert exported.clone(spec=model.spec) == model


def test_unknown_format_is_one_line(tiny_run, data_env, tmp_path):
  workdir, _ = tiny_run
  result = subprocess.run([sys.executable, "-m", "cnn.inference.export", str(workdir),
                           f"--out={tmp_path}/x", "--formats=onnx,coreml"], cwd=REPO,
                          env=data_env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: unknown export format 'coreml'; valid")
  assert not (tmp_path / "x").exists()
