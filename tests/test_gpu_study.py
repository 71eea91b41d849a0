"""`python -m bench.gpu_study` at its smallest size on the CPU: every phase runs, the record and the run say
what was measured, planned and spent; Ray and the embedding packages stay unimported (a GPU box may lack them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_CONFIG

pytestmark = pytest.mark.slow

# Imports that must fail in the child: the GPU path must not need them when no FAD/CLAP weights are present.
BLOCKED = ("ray", "laion_clap", "frechet_audio_distance")


def test_the_gpu_study_runs_at_its_smallest_size_on_the_cpu(tmp_path, esc50_mini, spectrogram_cache_dir):
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    arguments = [
        "--data", str(esc50_mini), "--minutes", "0.5", "--config", str(TINY_CONFIG), "--out", str(tmp_path / "study"),
        "--per-class", "1", "--classes", ",".join(str(c) for c in range(12)), "--measure-steps", "1",
        "--ckpt-dir", str(tmp_path / "no-weights"), "--tracking-uri", store, "--no-progress",
        f"data.cache_dir={spectrogram_cache_dir}", "sample.steps=2", "sample.griffin_lim_iters=2",
    ]  # fmt: skip
    blocker = "; ".join(f"sys.modules[{name!r}] = None" for name in BLOCKED)
    code = f"import sys; {blocker}; from bench.gpu_study import main; main({arguments!r})"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=400)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]

    out = tmp_path / "study"
    record = json.loads((out / "gpu_study.json").read_text())
    assert record["device"] == "cpu" and record["precision"] == "no"
    (fp32,) = record["throughput"]  # off the GPU only the mode the CPU trains in
    assert fp32["mode"] == "fp32" and fp32["train"]["samples_per_s"] > 0 and fp32["train"]["mfu"] is None
    assert record["planned_training_seconds"] > 0 and record["planned_generation_seconds"] > 0
    assert set(record["spent_seconds"]) == {"measure", "cache", "train", "generate_and_score", "total"}
    assert len(record["losses"]) >= 1 and "fd_esc" in record["metrics"] and "esc_top1" in record["metrics"]
    assert "fad_vggish" not in record["metrics"]  # no weights, no FAD: left out, not faked
    assert (out / "loss.png").stat().st_size > 0 and "fp32" in (out / "gpu_study.md").read_text()
    assert f"{out / 'gpu_study.md'}" in completed.stdout  # it ends with where its result is

    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    run = client.get_run(record["run_id"])
    assert run.data.params["train.max_steps"] == str(record["steps"])
    assert {"eval/fd_esc", "eval/esc_top1"} <= set(run.data.metrics)
    assert {f.path for f in client.list_artifacts(run.info.run_id, "gpu_study")} >= {
        "gpu_study/gpu_study.json", "gpu_study/gpu_study.md", "gpu_study/loss.png"}  # fmt: skip
