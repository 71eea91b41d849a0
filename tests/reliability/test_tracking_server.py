"""The MLflow server goes away mid-run and comes back; a server that is down at start; no token leaks."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from core.secrets import redact_uri
from tests.reliability.conftest import (
    error_lines,
    free_port,
    run_training,
    start_training,
    train_argv,
    wait_for,
)
from training.checkpoints import MARKER

TOKEN = "s3cr3t-t0ken-4f9a"


@pytest.mark.slow
def test_server_outage_mid_run_loses_no_metric_and_no_token_leaks(tmp_path, train_overrides, mlflow_server):
    output_dir = tmp_path / "run"
    # Credentials in the URI (the server ignores them): they must show up nowhere the run writes.
    secret_uri = mlflow_server.uri.replace("http://", f"http://alice:{TOKEN}@")
    steps = ["train.max_steps=40", "train.checkpoint_every=5"]
    log_file = tmp_path / "train.log"
    process = start_training(train_argv(train_overrides(output_dir, secret_uri, *steps)), log_file)

    wait_for(lambda: (output_dir / "checkpoints" / "step_000005" / MARKER).is_file(), 180, "the first checkpoint")
    mlflow_server.stop()
    # Training goes on while the server is down (MLflow's client alone would retry each call for minutes).
    wait_for(
        lambda: (output_dir / "checkpoints" / "step_000015" / MARKER).is_file() or process.poll() is not None,
        120,
        "two more checkpoints with the server down",
    )
    assert process.poll() is None, "training stopped while the server was down:\n" + log_file.read_text()[-3000:]
    mlflow_server.start()
    assert process.wait(timeout=300) == 0, log_file.read_text()[-3000:]
    output = log_file.read_text()
    assert "MLflow unreachable" in output  # the outage was seen, and survived

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("esc50-tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "the run was duplicated"
    run = runs[0]
    assert run.info.status == "FINISHED"
    steps_logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps_logged == list(range(1, 41)), "losses were lost or sent twice"

    # The token: not in params, tags, artifacts, local files or output; the redacted URI is recorded instead.
    assert run.data.params["tracking.tracking_uri"] == redact_uri(secret_uri)
    assert "***@127.0.0.1" in run.data.params["tracking.tracking_uri"]
    for key, value in {**run.data.params, **run.data.tags}.items():
        assert TOKEN not in value, f"token leaked into {key}"
    artifact_files = [p for p in (mlflow_server.root / "artifacts").rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in artifact_files)
    local_files = [p for p in output_dir.rglob("*") if p.is_file()]
    for path in artifact_files + local_files:
        assert TOKEN.encode() not in path.read_bytes(), f"token leaked into {path}"
    assert TOKEN not in output


def test_server_down_at_start_fails_fast_before_any_work(tmp_path, train_overrides):
    output_dir = tmp_path / "run"
    port = free_port()  # nothing listens there
    result = run_training(train_argv(train_overrides(output_dir, f"http://bob:{TOKEN}@127.0.0.1:{port}")), timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "not reachable" in errors[0], result.stderr
    assert TOKEN not in result.stderr + result.stdout
    assert not output_dir.exists(), "the output folder was claimed although the run could not start"
    assert "Traceback" not in result.stderr
