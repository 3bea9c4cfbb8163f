"""Corruptions and attacks (cnn/robustness) on real images and a really trained model.

The attacks run on the tiny MNIST run of conftest.py; the report end to end
(`--mode=evaluate`, figures, the comparison table) is in tests/test_report.py.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn import robustness
from cnn.inference import predictor
from cnn.report import compare
from cnn.robustness import adversarial, corruptions

# Its module-scoped fixtures are made once: the whole file runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("test_robustness")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar_images(cifar10):
  images, labels = cifar10.load_split("test[:12]")
  return images, labels


@pytest.fixture(scope="module")
def mnist_images(mnist):
  return mnist.load_split("test[:6]")


def test_every_corruption_changes_the_images_and_keeps_shape_and_dtype(cifar_images,
                                                                       mnist_images):
  for images in (cifar_images[0][:3], mnist_images[0][:3]):
    for name in corruptions.CORRUPTIONS:
      out = corruptions.generate(images, name, 3, seed=0)
      assert out.shape == images.shape and out.dtype == np.uint8, name
      assert not np.array_equal(out, images), name


def test_generation_is_deterministic_per_image_and_leaves_numpy_alone(cifar_images):
  images = cifar_images[0]
  state = np.random.get_state()
  for name in ("gaussian_noise", "impulse_noise", "glass_blur", "frost", "snow"):
    full = corruptions.generate(images, name, 4, seed=7)
    np.testing.assert_array_equal(full, corruptions.generate(images, name, 4, seed=7))
    # The first N images of a quick look are exactly those of the full run.
    np.testing.assert_array_equal(full[:5], corruptions.generate(images[:5], name, 4, seed=7))
    assert not np.array_equal(full, corruptions.generate(images, name, 4, seed=8)), name
  after = np.random.get_state()
  assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]


def test_severity_makes_a_corruption_stronger(cifar_images):
  images = cifar_images[0].astype(np.float64)
  change = [np.abs(corruptions.generate(cifar_images[0], "gaussian_noise", s, 0) - images).mean()
            for s in corruptions.SEVERITIES]
  assert change == sorted(change) and change[0] > 0


def test_released_cifar10_c_files_are_read_in_their_layout(cifar_images, tmp_path):
  """A directory in the released layout (severity blocks of the same test images);
  the report takes images and labels from it and says CIFAR-10-C."""
  images, labels = cifar_images
  directory = tmp_path / "cifar10_corrupted" / "CIFAR-10-C"
  directory.mkdir(parents=True)
  names = ("gaussian_noise", "contrast")
  for name in names:
    np.save(directory / f"{name}.npy", np.concatenate(
        [corruptions.generate(images, name, s, 0) for s in corruptions.SEVERITIES]))
  np.save(directory / "labels.npy", np.tile(labels, len(corruptions.SEVERITIES)))
  assert corruptions.released_dir(str(tmp_path)) == directory
  assert corruptions.released_dir(str(tmp_path / "elsewhere")) is None
  x, y = corruptions.load_released(directory, "contrast", 2, examples=5)
  np.testing.assert_array_equal(x, corruptions.generate(images[:5], "contrast", 2, 0))
  np.testing.assert_array_equal(y, labels[:5])

  fake_logits = lambda batch: np.eye(10)[(batch.reshape(len(batch), -1).sum(1) % 10)]
  released = corruptions.report(fake_logits, images, labels, released=directory, seed=0,
                                corruptions=names)
  generated = corruptions.report(fake_logits, images, labels, released=None, seed=0,
                                 corruptions=names)
  assert released["accuracy"] == generated["accuracy"]
  assert released["source"].startswith("CIFAR-10-C") and not released["generated"]
  assert "generated" in generated["source"] and generated["generated"]


@pytest.fixture(scope="module")
def tiny_predictor(tiny_run):
  return predictor.load(str(tiny_run[0]), "best")


@pytest.fixture(scope="module")
def attack_data(mnist):
  return mnist.load_split("test[:200]")


def test_eps_zero_is_clean_accuracy(tiny_predictor, attack_data):
  images, labels = attack_data
  clean = tiny_predictor.logits(images).argmax(-1) == labels
  attacker = adversarial.Attacker(tiny_predictor)
  for steps in (0, 3):
    np.testing.assert_array_equal(attacker.robust_correct(images, labels, 0.0, steps, 0), clean)


def test_more_pgd_steps_and_larger_eps_never_raise_accuracy(tiny_predictor, attack_data):
  images, labels = attack_data
  attacker = adversarial.Attacker(tiny_predictor)
  eps = 8 / 255
  by_steps = [attacker.robust_correct(images, labels, eps, steps, 0) for steps in (1, 2, 4)]
  for fewer, more in zip(by_steps, by_steps[1:]):
    assert not np.any(more & ~fewer)  # per example: robust after more steps => after fewer
  accuracy = [attacker.robust_correct(images, labels, e / 255, 4, 0).mean()
              for e in (0, 8, 25.5, 76.5)]
  assert accuracy == sorted(accuracy, reverse=True)
  assert accuracy[-1] < accuracy[0] - 0.2  # eps 0.3 breaks a plain MNIST model
  fgsm = [attacker.robust_correct(images, labels, e / 255, 0, 0).mean() for e in (0, 76.5)]
  assert fgsm[1] < fgsm[0]


@pytest.mark.slow
def test_attack_stays_in_the_ball_and_in_pixel_range(tiny_predictor, attack_data):
  """The perturbation the attack finds raises the loss and respects eps and [0, 1]."""
  import jax
  import jax.numpy as jnp
  images, labels = attack_data
  logits = adversarial.logits_fn(tiny_predictor)
  x = jnp.asarray(images[:50], jnp.float32) / 255
  y = jnp.asarray(labels[:50], jnp.int32)
  loss = lambda z: adversarial._loss_and_correct(logits, tiny_predictor.variables, z, y)[0]
  eps = 8 / 255
  step = jnp.sign(jax.grad(loss)(x))
  adv = jnp.clip(x + eps * step, 0, 1)
  assert float(jnp.abs(adv - x).max()) <= eps + 1e-6
  assert float(loss(adv)) > float(loss(x))


def test_sections_are_validated_with_the_same_names(tmp_path):
  result = subprocess.run(
      [sys.executable, "main.py", "--config=configs/tiny_mnist.py", f"--workdir={tmp_path}",
       "--mode=evaluate", "--config.robustness.sections=calibration,attacks"],
      cwd=REPO, capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 2
  assert "config.robustness.sections='calibration,attacks'" in result.stderr
  assert "adversarial" in result.stderr.splitlines()[-1]


def test_cli_adds_the_report_to_a_record(tmp_path, data_env):
  """`python -m cnn.robustness WEIGHTS --record FILE`, on the published MNIST weights."""
  record = tmp_path / "resnet20_mnist_seed0.json"
  record.write_text((REPO / "results" / "resnet20_mnist_seed0.json").read_text())
  result = subprocess.run(
      [sys.executable, "-m", "cnn.robustness",
       "results/weights/resnet20_mnist_seed0.safetensors", "--sections", "calibration",
       "--record", str(record)], cwd=REPO, env=data_env, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  entry = json.loads(record.read_text())
  cal = entry["robustness"]["calibration"]
  assert cal["test"]["accuracy"] == pytest.approx(entry["test_accuracy"])
  assert cal["fitted_on"] == "train[55000:]" and 0 < cal["temperature"] < 20
  row = compare.load_results(str(record))
  assert row["ece"] == cal["test"]["ece"] and row["pgd_2"] is None
  table = compare.markdown([str(record)], [row])
  assert f"{100 * cal['test']['ece']:.2f}" in table
