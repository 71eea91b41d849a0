"""A real `mlflow server` on 127.0.0.1 receives a training run: params, metrics, artifacts, tags."""

from __future__ import annotations

import pytest

from training.train import train


@pytest.mark.slow
def test_training_run_lands_on_a_real_tracking_server(mlflow_server, tiny_config, tmp_path) -> None:
    import mlflow

    config = tiny_config(
        f"tracking.tracking_uri={mlflow_server}", "tracking.experiment=server-test", "train.max_steps=4",
        "train.log_every=2", "train.checkpoint_every=4", "train.sample_every=2", "train.sample_classes=[0,10]",
    )  # fmt: skip
    result = train(config, show_progress=False)

    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.loss"] == "l2" and run.data.params["data.resolution"] == "32"
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_sec"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [2, 4]
    assert len(run.data.tags["git_commit"]) >= 7 and len(run.data.tags["config_hash"]) == 12

    def listed(path: str) -> set[str]:
        return {item.path for item in client.list_artifacts(result.run_id, path)}

    assert "config.yaml" in listed("")
    assert {"model/unet", "model/scheduler", "model/audio.json"} <= listed("model")
    assert {"samples/step_000002", "samples/final"} <= listed("samples")
    assert {"samples/final/dog.wav", "samples/final/rain.wav", "samples/final/spectrograms.png"} <= listed(
        "samples/final"
    )
    # The model comes back from the server and loads.
    local = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="model", dst_path=str(tmp_path / "dl"), tracking_uri=mlflow_server
    )
    from core.diffusion.model import DiffusionModel

    assert DiffusionModel.load(local).mlflow_run_id == result.run_id
