"""Training through accelerate launch, DDP on two CPU processes, exact resume, divergence."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.diffusion.model import DiffusionModel
from core.errors import UserError
from tests.conftest import REPO, TINY_CONFIG, free_port
from training.checkpoints import complete_checkpoints
from training.run_folder import LOCK_FILE
from training.train import train

VENV_BIN = Path(sys.executable).parent


def _common_overrides(tmp_path: Path, esc50_mini: Path, cache: Path) -> list[str]:
    return [
        f"data.source={esc50_mini}",
        f"data.cache_dir={cache}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "train.sample_classes=[0]",
    ]


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600, **kwargs)


@pytest.mark.slow
def test_accelerate_launch_trains_checkpoints_and_tracks(tmp_path, esc50_mini, spectrogram_cache_dir) -> None:
    import mlflow

    output = tmp_path / "run"
    result = _run(
        [str(VENV_BIN / "accelerate"), "launch", "--config_file", "accelerate_config.yaml", "--cpu",
         "-m", "training.train", "--config", str(TINY_CONFIG), "--no-progress", f"output_dir={output}",
         "train.max_steps=6", "train.checkpoint_every=3", "train.log_every=2",
         *_common_overrides(tmp_path, esc50_mini, spectrogram_cache_dir)],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in complete_checkpoints(output)] == ["step_000003", "step_000006"]
    assert (output / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((output / "model" / "audio.json").read_text())["mel"]["resolution"] == 32
    run_id = json.loads((output / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "6"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 3, 4, 6]


@pytest.mark.slow
def test_two_cpu_processes_each_see_a_different_half(tmp_path, esc50_mini, spectrogram_cache_dir) -> None:
    overrides = _common_overrides(tmp_path, esc50_mini, spectrogram_cache_dir)
    torchrun = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]
    probe = _run(
        [*torchrun, "tests/ddp_probe.py", str(TINY_CONFIG), str(tmp_path), f"output_dir={tmp_path}", *overrides]
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    seen0, seen1 = set(ranks[0]["seen"]), set(ranks[1]["seen"])
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == ranks[0]["batches"] * 16 > 0
    assert seen0.isdisjoint(seen1)

    # The real loop on two processes (gloo): gradients are averaged, one model comes out.
    output = tmp_path / "ddp-run"
    trained = _run(
        [*torchrun, "-m", "training.train", "--config", str(TINY_CONFIG), "--no-progress", f"output_dir={output}",
         "train.max_steps=4", "train.checkpoint_every=2", "train.log_every=1", *overrides],
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (output / "model" / "audio.json").is_file()
    assert [p.name for p in complete_checkpoints(output)] == ["step_000002", "step_000004"]
    assert (complete_checkpoints(output)[-1] / "random_states_1.pkl").is_file()  # each process's RNG is saved


def _lock_is_free(output_dir: Path) -> bool:
    """Whether another job could lock the folder now (a new open file conflicts even within one process)."""
    with open(output_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model" / "unet" / "diffusion_pytorch_model.safetensors")


def test_resume_matches_uninterrupted_run(tmp_path, tiny_config) -> None:
    import mlflow

    settings = ["train.max_steps=16", "train.checkpoint_every=5", "train.log_every=1", "train.sample_every=5"]
    settings.append("train.checkpoints_keep=2")
    straight = train(tiny_config(*settings, output_dir=tmp_path / "straight"), show_progress=False)
    interrupted_config = tiny_config(*settings, output_dir=tmp_path / "interrupted")
    first = train(interrupted_config, show_progress=False, stop_after_steps=7)
    assert first.step == 7 and DiffusionModel.load(first.model_dir).unet is not None  # the EMA model as of step 7
    again = train(interrupted_config, resume="latest", show_progress=False, stop_after_steps=7)
    assert (again.step, again.losses) == (7, {})  # already there: no step trained past the stop
    rest = train(interrupted_config, resume="latest", show_progress=False)

    # Keep 2, and the last step is always checkpointed (checkpoint_every=5 does not divide 16).
    assert [p.name for p in complete_checkpoints(straight.output_dir)] == ["step_000015", "step_000016"]
    assert rest.run_id == first.run_id  # the same MLflow run continues
    assert {**first.losses, **rest.losses} == straight.losses  # crosses an epoch boundary (12 batches)
    assert sorted(straight.losses) == list(range(1, 17))
    resumed, reference = _weights(rest.output_dir), _weights(straight.output_dir)
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)
    client = mlflow.tracking.MlflowClient(tracking_uri=interrupted_config.tracking.tracking_uri)
    history = client.get_metric_history(rest.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 17))  # each step once, none lost or doubled
    assert client.get_run(rest.run_id).info.status == "FINISHED"
    assert _lock_is_free(rest.output_dir)


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config) -> None:
    config = tiny_config(
        "train.max_steps=40", "train.checkpoint_every=2", "train.log_every=1", "train.learning_rate=1e30",
        "train.warmup_steps=1000000", "train.max_grad_norm=1e30",  # lr 0 at the first update, then huge
    )  # fmt: skip
    with pytest.raises(UserError, match=r"loss became (nan|inf).*last good checkpoint"):
        train(config, show_progress=False)
    assert _lock_is_free(Path(config.output_dir))  # released on the error: a retry elsewhere may resume
    assert not (Path(config.output_dir) / "model").exists()
    for checkpoint in complete_checkpoints(config.output_dir):
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values())


def test_second_run_into_the_same_output_dir_is_refused(tmp_path, tiny_config) -> None:
    config = tiny_config("train.max_steps=2", "train.checkpoint_every=2")
    train(config, show_progress=False)
    before = (Path(config.output_dir) / "config.yaml").read_text()
    with pytest.raises(UserError, match="already holds a run"):
        train(config, show_progress=False)
    assert (Path(config.output_dir) / "config.yaml").read_text() == before


def test_resume_continues_the_saved_config_and_the_run_says_where_it_is(
    tmp_path, esc50_mini, spectrogram_cache_dir, tmp_path_factory, capsys, caplog, monkeypatch
) -> None:
    """The README's resume line, without the first run's overrides: the saved config continues; a safe key
    extends it (a diff, printed and tagged), any other key is refused. Along the way: the last step is logged,
    the quick evaluation, MLflow's metadata, the pictures, and where everything is."""
    import mlflow

    from training.train import main

    monkeypatch.setenv("PROGRESS_LOG_SECONDS", "0")  # the periodic line under --no-progress: every step here
    output, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    located = [f"output_dir={output}", f"data.cache_dir={spectrogram_cache_dir}", f"tracking.tracking_uri={uri}"]
    first = [*located, f"data.source={esc50_mini}", "model.attention=false", "train.max_steps=3",
             "train.log_every=10", "train.checkpoint_every=10", "train.sample_classes=[0]", "sample.steps=4",
             "train.eval_every=2", "train.eval_per_class=1",
             f"train.eval_cache_dir={tmp_path_factory.getbasetemp() / 'evaluation-cache'}"]  # fmt: skip
    main(["--config", str(TINY_CONFIG), "--no-progress", "--stop-after-steps", "2", *first])
    said = capsys.readouterr()
    assert f"stopped early at step 2 of 3 (--stop-after-steps); continue with:\n  python -m training.train " \
           f"output_dir={output} --resume latest" in said.out  # fmt: skip
    assert "training: 2/3 steps (67%), loss " in said.err and "ETA" in said.err

    # Resumed as the README says, with a longer run: the saved config (no attention) continues.
    main(["--config", str(TINY_CONFIG), "--no-progress", "--resume", "latest", *located, "train.max_steps=4"])
    said = capsys.readouterr()
    assert "resume changes train.max_steps: 3 -> 4" in said.out
    assert "differs in model.attention" in caplog.text  # the --config file's value, not applied
    model = json.loads((output / "model" / "unet" / "config.json").read_text())
    assert not any("Attn" in block for block in model["down_block_types"] + model["up_block_types"])
    run_id = json.loads((output / "run.json").read_text())["mlflow_run_id"]
    assert f"output: {output.resolve()}" in said.out and f"MLflow run: {run_id}" in said.out
    assert f"-m mlflow ui --backend-store-uri {uri}" in said.out  # tmp_path is absolute: works from anywhere

    # Any key that decides what the checkpoints hold is refused, naming it; nothing is rewritten.
    config_text = (output / "config.yaml").read_text()
    with pytest.raises(SystemExit) as refused:
        main(["--no-progress", "--resume", "latest", *located, "train.learning_rate=0.5"])
    assert refused.value.code == 2 and "--resume cannot change train.learning_rate" in capsys.readouterr().err
    assert (output / "config.yaml").read_text() == config_text

    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.max_steps"] == "3"  # params keep the first
    assert run.data.tags["resume.step_000002"] == "train.max_steps: 3 -> 4"
    # The last step of each job is logged (log_every=10 is longer than either job), and each once.
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [2, 4]
    assert [m.step for m in client.get_metric_history(run_id, "quick_eval/esc_top1")] == [2, 4]
    assert {"quick_eval/fd_esc", "quick_eval/memorization_esc"} <= set(run.data.metrics)
    # MLflow's own metadata: source and git tags, the training data as the run's input, a readable name.
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.git.commit"] and tags["mlflow.user"]
    assert tags["mlflow.runName"] == "tiny model.attention=false train.max_steps=3 train.log_every=10 " \
        "train.checkpoint_every=10 train.sample_classes=[0] sample.steps=4 train.eval_every=2 " \
        "train.eval_per_class=1 seed=0"  # fmt: skip
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    record = json.loads((output / "model" / "audio.json").read_text())["training"]
    assert dataset.source_type and str(esc50_mini) in dataset.source and json.loads(dataset.profile)["num_rows"] == \
        record["clips"]  # fmt: skip
    assert dataset.digest == record["digest"][:36]
    artifacts = {f.path for f in client.list_artifacts(run_id, "samples/final")}
    assert {"samples/final/real_vs_generated.png", "samples/final/dog.wav"} <= artifacts
    assert (output / "samples" / "final" / "real_vs_generated.png").stat().st_size > 10_000


def test_mixed_precision_comes_from_the_config_else_the_launcher_and_says_which(tiny_config, monkeypatch) -> None:
    from training.train import mixed_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert mixed_precision(tiny_config()) == (
        "no",
        "default (neither train.mixed_precision nor accelerate launch set it)",
    )
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    assert mixed_precision(tiny_config()) == ("bf16", "accelerate launch (train.mixed_precision is not set)")
    assert mixed_precision(tiny_config("train.mixed_precision=no")) == (
        "no", "train.mixed_precision, over accelerate launch's 'bf16'"
    )  # fmt: skip
