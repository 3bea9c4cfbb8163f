"""A `gs://` workdir end to end against a real local GCS emulator
(tests/gcs_emulator.py): training, a resume and `--mode=evaluate` write
checkpoints, metrics, TensorBoard events, results.json and the report into
the bucket, and nothing under the current directory. Marked `cluster` (about
two minutes): python -m pytest -q tests --cluster -m cluster
"""
import json
import os

import pytest

from conftest import REPO, run_main
from gcs_emulator import gcs_emulator, list_objects

TINY = ["--config=configs/tiny_mnist.py", "--config.data.train_split=train[:1024]"]


@pytest.mark.cluster
def test_train_resume_and_evaluate_in_a_gs_bucket(data_env, mnist, tmp_path):
  cwd_before = set(os.listdir(REPO))
  with gcs_emulator(tmp_path) as gcs:
    env = {**data_env, **gcs["env"]}
    workdir = "--workdir=gs://bucket/runs/tiny"
    first = run_main(env, *TINY, "--config.num_epochs=1", workdir)
    assert "resumed from" not in first.stderr
    resumed = run_main(env, *TINY, "--config.num_epochs=2", workdir)
    assert "resumed from gs://bucket/runs/tiny/checkpoints at step 16" in resumed.stderr
    run_main(env, *TINY, "--config.num_epochs=2", workdir, "--mode=evaluate")
    objects = list_objects(gcs["url"], "bucket", "runs/tiny/")
    results = json.loads(_read(gcs["url"], "runs/tiny/results.json"))
    metrics = _read(gcs["url"], "runs/tiny/metrics.jsonl").splitlines()
  assert results["steps"] == 32 and len(metrics) == 2
  names = set(objects)
  for expected in ("runs/tiny/results.json", "runs/tiny/metrics.jsonl", "runs/tiny/timing.jsonl",
                   "runs/tiny/report/index.html", "runs/tiny/report/confusion_matrix.png",
                   "runs/tiny/report/classification_report.json"):
    assert expected in names, sorted(names)
  assert any(n.startswith("runs/tiny/checkpoints/32/state/") for n in names)
  assert any(n.startswith("runs/tiny/tensorboard/events.out.tfevents") for n in names)
  assert set(os.listdir(REPO)) == cwd_before  # no ./gs:/... or stray files
  assert not (REPO / "gs:").exists()


def _read(url: str, name: str) -> str:
  import urllib.parse
  import urllib.request
  quoted = urllib.parse.quote(name, safe="")
  return urllib.request.urlopen(f"{url}/storage/v1/b/bucket/o/{quoted}?alt=media",
                                timeout=10).read().decode()
