"""`python main.py --mode=predict`: the test split written to PNG files and
classified from them gives evaluation's predictions; bad files are reported
one line each while the rest are classified."""
import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_main
from cnn import datasets


def _write_pngs(folder, images_uint8):
  folder.mkdir()
  mode = "L" if images_uint8.shape[-1] == 1 else "RGB"
  for i, image in enumerate(images_uint8):
    Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(folder / f"{i:05d}.png")


@pytest.mark.parametrize("dataset", ["mnist", pytest.param("cifar10", marks=pytest.mark.slow)])
def test_test_split_as_png_files_predicts_what_evaluation_measured(
    dataset, request, data_env, tmp_path):
  """All 10,000 test images as PNG files: the predicted classes give exactly
  the test accuracy results.json records (CIFAR-10 with test-time flips)."""
  workdir = request.getfixturevalue("tiny_run")[0] if dataset == "mnist" else (
      request.getfixturevalue("tiny_cifar_run"))
  test_images, labels = request.getfixturevalue(dataset).load_split("test")
  _write_pngs(tmp_path / "pngs", test_images)
  result = run_main(data_env, "--mode=predict", f"--workdir={workdir}",
                    f"--images={tmp_path}/pngs", f"--out={tmp_path}/out")
  report = json.loads((tmp_path / "out/predictions.json").read_text())
  rows = report["predictions"]
  assert [r["path"] for r in rows] == [f"{tmp_path}/pngs/{i:05d}.png" for i in range(10_000)]
  top1 = np.array([r["top"][0]["index"] for r in rows])
  results = json.loads((workdir / "results.json").read_text())
  assert np.mean(top1 == labels) == pytest.approx(results["test_accuracy"], abs=1e-9)
  assert report["conversion"]["name"] == {"mnist": "digit", "cifar10": "photo"}[dataset]
  assert report["source"]["epoch"] == results["best_epoch"]
  first = rows[0]
  assert [t["probability"] for t in first["top"]] == sorted(first["probabilities"])[::-1][:3]
  assert first["top"][0]["class"] == report["class_names"][first["top"][0]["index"]]
  assert result.stdout.splitlines()[0].startswith(f"{tmp_path}/pngs/00000.png  ")
  assert "10000 of 10000 images classified" in result.stdout
  with open(tmp_path / "out/predictions.csv", newline="") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 10_000 and table[0]["class_1"] == first["top"][0]["class"]
  assert float(table[0]["probability_1"]) == pytest.approx(first["top"][0]["probability"],
                                                           abs=1e-6)


def test_bad_files_get_one_line_each_and_the_rest_are_classified(tiny_run, data_env,
                                                                 tmp_path, mnist):
  workdir, _ = tiny_run
  digit = mnist.load_split("test")[0][0]
  folder = tmp_path / "in"
  folder.mkdir()
  Image.fromarray(digit[..., 0], "L").save(folder / "a_good.png")
  (folder / "b_empty.png").write_bytes(b"")
  (folder / "c_text.jpg").write_text("hello\n")
  (folder / "d_cut.png").write_bytes((folder / "a_good.png").read_bytes()[:150])
  shutil.copy(folder / "a_good.png", folder / "e_locked.png")
  (folder / "e_locked.png").chmod(0)
  # As an unprivileged user (a new user namespace): root would read the locked file.
  result = subprocess.run(
      ["unshare", "--user", sys.executable, "main.py", "--mode=predict", f"--workdir={workdir}",
       f"--images={folder}", f"--images={tmp_path}/missing.png", "--top_k=2",
       f"--out={tmp_path}/out"],
      cwd=REPO, env=data_env, capture_output=True, text=True, timeout=300)
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [
      f"error: {folder}/b_empty.png: empty file",
      f"error: {folder}/c_text.jpg: not an image file Pillow can read",
      f"error: {folder}/d_cut.png: damaged or truncated image (image file is truncated)",
      f"error: {folder}/e_locked.png: cannot read it: permission denied",
      f"error: {tmp_path}/missing.png: no such file or folder"], result.stderr
  assert result.returncode == 2
  rows = json.loads((tmp_path / "out/predictions.json").read_text())["predictions"]
  assert [r["error"] is None for r in rows] == [True, False, False, False, False, False]
  assert len(rows[0]["top"]) == 2
  assert "1 of 6 images classified" in result.stdout


def test_mistakes_are_one_line_and_nothing_is_written(tiny_run, data_env, tmp_path):
  workdir, _ = tiny_run
  (tmp_path / "x.txt").write_text("no image\n")
  for args, message in (
      ([f"--images={tmp_path}/x.txt"], "--mode=predict needs --workdir=W (a trained workdir) "
                                       "or --weights=FILE, not both"),
      ([f"--workdir={workdir}"], "--mode=predict needs --images=FILE|FOLDER|GLOB"),
      ([f"--workdir={workdir}", f"--images={tmp_path}/x.txt", f"--out={tmp_path}/o"],
       "error: none of the 1 inputs could be classified; nothing written"),
      ([f"--workdir={tmp_path}", f"--images={tmp_path}/x.txt"],
       f"no checkpoint in {tmp_path}/checkpoints; train first"),
      ([f"--weights={tmp_path}/w.safetensors", f"--images={tmp_path}/x.txt"],
       f"weights file {tmp_path}/w.safetensors not found")):
    result = run_main(data_env, "--mode=predict", *args, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr.splitlines()[-1], result.stderr
  assert not (tmp_path / "o").exists()
