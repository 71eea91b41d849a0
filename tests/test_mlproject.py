"""`mlflow run . -e train --env-manager local`: the MLproject entry point trains into the run MLflow made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_mlflow_run_train_entry_point(tmp_path, esc50_mini, spectrogram_cache_dir) -> None:
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # mlflow.set_experiment in earlier in-process tests exports MLFLOW_EXPERIMENT_ID: keep it out.
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env.update(MLFLOW_TRACKING_URI=store, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    overrides = (
        f"output_dir={tmp_path / 'run'} data.source={esc50_mini} data.cache_dir={spectrogram_cache_dir} "
        "train.max_steps=2 train.checkpoint_every=2 train.log_every=1 train.sample_classes=[0]"
    )
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    # Created here so that its artifacts go to tmp_path, not to ./mlruns of the repo `mlflow run` runs in.
    client.create_experiment("mlproject", artifact_location=(tmp_path / "artifacts").as_uri())
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager", "local",
         "--experiment-name", "mlproject", "-P", "config=configs/tiny.yaml", "-P", f"overrides={overrides}"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("mlproject").experiment_id])
    assert len(runs) == 1  # training adopted the run `mlflow run` created
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["train.max_steps"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    assert (tmp_path / "run" / "model" / "audio.json").is_file()
