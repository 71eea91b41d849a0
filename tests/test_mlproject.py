"""`mlflow run . -e train`, exactly as the README writes it, from a shell without the venv on PATH."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def readme_command(prefix: str) -> list[str]:
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"the README has {len(lines)} lines starting with {prefix!r}"
    return shlex.split(lines[0])


@pytest.mark.slow
def test_readme_mlflow_run_train_works_outside_the_venv(tmp_path, esc50_mini, spectrogram_cache_dir) -> None:
    import mlflow

    command = readme_command(".venv/bin/mlflow run . -e train")
    experiment = command[command.index("--experiment-name") + 1]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # No venv on PATH (a shell that never activated it: bare `python` there has no torch); our own MLflow
    # variables out (in-process tests export MLFLOW_EXPERIMENT_ID).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "VIRTUAL_ENV"}
    venv_bin = str(Path(sys.executable).parent)
    env.update(
        MLFLOW_TRACKING_URI=store, PATH=os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    )
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    # Created here so that its artifacts go to tmp_path, not to ./mlruns of the checkout `mlflow run` runs in.
    client.create_experiment(experiment, artifact_location=(tmp_path / "artifacts").as_uri())
    index = command.index(next(item for item in command if item.startswith("overrides=")))
    readme_overrides = command[index].removeprefix("overrides=")
    command[index] = (
        f"overrides={readme_overrides} output_dir={tmp_path / 'run'} data.source={esc50_mini} "
        f"data.cache_dir={spectrogram_cache_dir} train.max_steps=2 train.checkpoint_every=2 train.sample_classes=[0]"
    )  # the README's, made tiny: later overrides win
    command[0] = str(REPO / command[0])
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1  # training adopted the run `mlflow run` created
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["train.max_steps"] == "2"
    assert run.data.params["train.loss"] == "l1"
    assert run.info.run_name.startswith(f"tiny {readme_overrides} ") and run.info.run_name.endswith(" seed=0")
    assert run.data.tags["mlflow.source.type"] == "PROJECT"  # MLflow's own source tags, from `mlflow run`
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2]  # the last step
    assert (tmp_path / "run" / "model" / "audio.json").is_file()
    assert f"MLflow run: {run.info.run_id}" in result.stdout
