"""`mlflow run . -e train`, exactly as the README writes it, from a shell without the venv on PATH."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
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


TOKEN = "t0k3n-5e1f"


@pytest.mark.slow
def test_a_credential_in_mlflow_run_parameters_is_refused_and_its_run_erased(tmp_path) -> None:
    """MLflow Projects stores every -P value as a param (before our command starts): the run holding the token is
    erased once `mlflow run` has ended, and the command says how to pass credentials instead."""
    import mlflow
    from mlflow.entities import ViewType

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("leaky", artifact_location=(tmp_path / "artifacts").as_uri())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = store
    overrides = f"tracking.tracking_uri=http://alice:{TOKEN}@127.0.0.1:1 output_dir={tmp_path / 'run'}"
    command = [str(REPO / ".venv/bin/mlflow"), "run", ".", "-e", "train", "--env-manager", "local",
               "--experiment-name", "leaky", "-P", f"overrides={overrides}"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "-P overrides holds a credential" in errors[0], result.stderr[-3000:]
    assert "MLFLOW_TRACKING_USERNAME" in errors[0] and TOKEN not in errors[0]
    assert "Traceback" not in result.stderr  # `mlflow run` itself ends in its one line: the run was still there
    assert not (tmp_path / "run").exists()

    def stored() -> list:
        return client.search_runs([experiment], run_view_type=ViewType.ALL)

    deadline = time.monotonic() + 60
    while stored() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stored() == [], "the run holding the token is still in the store (deleted or not)"
    assert "is erased from the store" in result.stdout  # the eraser says what it did, once `mlflow run` ended


def test_a_tracking_uri_other_than_the_launchers_store_is_refused(tmp_path, monkeypatch) -> None:
    import mlflow
    from mlflow.entities import ViewType

    from core.errors import UserError
    from core.tracking import check_launcher_run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.create_experiment("launched", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    check_launcher_run(store)  # the same store (or none given): fine
    check_launcher_run("")
    with pytest.raises(UserError, match=r"is not the store `mlflow run` made this command's run in") as error:
        check_launcher_run(f"http://bob:{TOKEN}@127.0.0.1:5000")  # the run does not exist there
    assert TOKEN not in str(error.value)
    client.log_param(run_id, "notes", "see http://example.org/?keyword=x and ssh://git@host/repo")  # look-alikes
    check_launcher_run(store)
    client.log_param(run_id, "overrides", f"tracking.tracking_uri=http://{TOKEN}@host")  # a token-only URI
    client.log_metric(run_id, "train/loss", 1.0)  # a run with a history (`mlflow run --run-id` of an old one)
    with pytest.raises(UserError, match=r"-P overrides holds a credential") as error:
        check_launcher_run(store)
    assert TOKEN not in str(error.value) and "left as it is" in str(error.value)
    assert [run.info.run_id for run in client.search_runs([experiment], run_view_type=ViewType.ALL)] == [run_id]
