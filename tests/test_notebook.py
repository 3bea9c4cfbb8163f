"""notebooks/quickstart.ipynb runs top to bottom (nbclient, a real Jupyter
kernel) on the tiny config, offline: train, report, predict, published weights."""
import json
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO


@pytest.mark.slow
def test_quickstart_notebook_runs_top_to_bottom(data_env, tmp_path, mnist):
  shipped = REPO / "results/resnet20_mnist_seed0.json"
  if "weights" not in json.loads(shipped.read_text()):
    pytest.fail("results/resnet20_mnist_seed0.json ships no weights; the notebook loads them")
  before = untracked()
  notebook = nbformat.read(REPO / "notebooks/quickstart.ipynb", as_version=4)
  env = {**data_env, "QUICKSTART_WORKDIR": str(tmp_path / "quick")}
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(REPO / "notebooks")}}).execute(env=env)
  outputs = ["".join(o.get("text", "") for o in cell.get("outputs", []))
             for cell in notebook.cells if cell.cell_type == "code"]
  text = "\n".join(outputs)
  recorded = json.loads(shipped.read_text())["test_accuracy"]
  assert f"test accuracy of the shipped weights here: {recorded:.4f}" in text
  images = sum(1 for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", []) if "image/png" in o.get("data", {}))
  assert images >= 5  # 4 report figures and the classified image
  assert (tmp_path / "quick/predictions/predictions.json").exists()
  assert untracked() == before  # everything went to QUICKSTART_WORKDIR


def untracked() -> str:
  return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                        capture_output=True, text=True, check=True).stdout
