"""cnn.workdir.Workdir: every file and folder of a run named once (gs:// workdirs:
tests/test_remote_workdir.py runs them against a GCS emulator)."""
import os
import re
from pathlib import Path

from cnn import workdir as workdirs

ROOT = Path(__file__).resolve().parents[1]


def test_names_every_file_and_folder_of_a_run(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  w = workdirs.Workdir.of("runs/r20")
  assert str(w) == "runs/r20" and not w.is_uri  # error lines name it as the user wrote it
  root = tmp_path / "runs" / "r20"
  assert str(w.path) == str(root)
  expected = {"checkpoints": "checkpoints", "damaged_checkpoints": "damaged_checkpoints",
              "results": "results.json", "metrics": "metrics.jsonl", "timing": "timing.jsonl",
              "steps": "steps.jsonl", "lock": "trainer.lock", "report": "report",
              "tensorboard": "tensorboard", "predictions": "predictions"}
  for attribute, name in expected.items():
    assert str(getattr(w, attribute)) == str(root / name), attribute
  assert str(w.checkpoint(390)) == str(root / "checkpoints" / "390")
  assert workdirs.Workdir.of(w) is w


def test_a_uri_stays_as_given():
  w = workdirs.Workdir.of("gs://bucket/runs/r20")
  assert w.is_uri and str(w) == "gs://bucket/runs/r20"
  assert os.fspath(w.results) == "gs://bucket/runs/r20/results.json"


def test_no_other_module_spells_a_workdir_file_name():
  """The names live in cnn/workdir.py only: every other module asks the Workdir."""
  spelled = re.compile(r"""["'](results\.json|metrics\.jsonl|timing\.jsonl|steps\.jsonl|"""
                       r"""trainer\.lock|damaged_checkpoints)["']|/ ["'](checkpoints|report|"""
                       r"""tensorboard|predictions)["']""")
  found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
           for p in sorted((ROOT / "cnn").rglob("*.py")) if p.name != "workdir.py"
           for n, line in enumerate(p.read_text().splitlines(), 1)
           if spelled.search(line) and not line.lstrip().startswith("#")]
  assert not found, "\n".join(found)
