"""A full disk, a folder that cannot be written, two runs in one folder: a clear error, nothing lost."""

from __future__ import annotations

import hashlib
import resource
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY_CONFIG
from tests.reliability.conftest import FAST, error_lines, run_training, start_training, train_argv, wait_for
from training.checkpoints import complete_checkpoints, verify_checkpoint


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def immutable():
    """`immutable(folder)`: nobody, root included, may create or rename entries in it (`chattr +i`)."""
    made: list[Path] = []

    def make(folder: Path) -> None:
        result = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"chattr +i does not work here: {result.stderr.strip()}")
        made.append(folder)

    yield make
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.fixture
def run_with_checkpoint(tmp_path, train_overrides):
    """A finished 4-step run with one checkpoint; returns (overrides to resume it to 8 steps, the checkpoint)."""
    output_dir, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = run_training(train_argv(train_overrides(output_dir, uri, "train.max_steps=4", "train.checkpoint_every=4")))
    assert first.returncode == 0, first.stderr[-3000:]
    (checkpoint,) = complete_checkpoints(output_dir)
    return train_overrides(output_dir, uri, "train.max_steps=8", "train.checkpoint_every=4"), checkpoint


def limit_file_size(limit: int):
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as a full disk fails with ENOSPC.
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.slow
def test_disk_full_while_checkpointing_is_a_clear_error_and_keeps_the_previous_checkpoint(run_with_checkpoint):
    overrides, previous = run_with_checkpoint
    before = digests(previous)
    # Room for every file but the largest (the optimizer state, written by torch.save, not by Python's open).
    limit = max((previous / name).stat().st_size for name in before) - 65536
    result = run_training(train_argv(overrides, resume=True), preexec_fn=limit_file_size(limit))
    assert result.returncode == 2, result.stderr[-3000:]
    (error,) = error_lines(result.stderr)
    assert "cannot write checkpoint" in error and "step_000008" in error and f"{previous} is intact" in error
    assert "Traceback" not in result.stderr
    assert digests(previous) == before
    verify_checkpoint(previous)
    assert complete_checkpoints(previous.parent.parent) == [previous]
    assert not list(previous.parent.glob(".*partial")), "the failed staging folder was left behind"


@pytest.mark.slow
def test_checkpoint_folder_not_writable_is_a_clear_error_and_keeps_the_previous_checkpoint(
    run_with_checkpoint, immutable
):
    overrides, previous = run_with_checkpoint
    before = digests(previous)
    immutable(previous.parent)
    result = run_training(train_argv(overrides, resume=True))
    assert result.returncode == 2, result.stderr[-3000:]
    (error,) = error_lines(result.stderr)
    assert (
        "cannot write checkpoint" in error and "Operation not permitted" in error and f"{previous} is intact" in error
    )
    assert digests(previous) == before
    verify_checkpoint(previous)


def test_output_folder_not_writable_fails_before_any_work(tmp_path, tiny_config, immutable, capsys):
    from training.train import main

    parent = tmp_path / "locked"
    parent.mkdir()
    immutable(parent)
    config = tiny_config(output_dir=parent / "run")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(TINY_CONFIG), *_as_overrides(config)])
    assert exit_info.value.code == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert f"cannot write to output_dir {parent / 'run'}" in error


def test_output_folder_under_a_file_is_a_clear_error(tmp_path, tiny_config, capsys):
    from training.train import main

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    config = tiny_config(output_dir=blocker / "run")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(TINY_CONFIG), *_as_overrides(config)])
    assert exit_info.value.code == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert f"cannot write to output_dir {blocker / 'run'}" in error


@pytest.mark.slow
def test_two_runs_started_at_once_into_one_folder_exactly_one_runs(tmp_path, train_overrides):
    output_dir, uri = tmp_path / "shared", f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Two processes must not both create the store; its artifacts in tmp_path (not ./mlruns of the checkout).
    MlflowClient(tracking_uri=uri).create_experiment("esc50-tiny", artifact_location=(tmp_path / "artifacts").as_uri())
    processes = {
        name: start_training(
            train_argv(train_overrides(output_dir, uri, "train.max_steps=4", f"tracking.run_name={name}")),
            tmp_path / f"{name}.log",
        )
        for name in ("first", "second")
    }
    codes = {name: process.wait(timeout=240) for name, process in processes.items()}
    assert sorted(codes.values()) == [0, 2], codes
    winner = next(name for name, code in codes.items() if code == 0)
    loser = next(name for name, code in codes.items() if code == 2)
    (error,) = error_lines((tmp_path / f"{loser}.log").read_text())
    assert f"output_dir {output_dir} already holds a run" in error
    # The winner's files are the winner's: its config, its one MLflow run, its finished model.
    assert f"run_name: {winner}" in (output_dir / "config.yaml").read_text()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("esc50-tiny").experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [(winner, "FINISHED")]
    assert (output_dir / "model" / "audio.json").is_file()
    assert not list(output_dir.glob(".config.yaml*")), "a temporary config was left behind"


@pytest.mark.slow
def test_a_resume_while_the_run_is_still_going_is_refused_and_touches_nothing(tmp_path, train_overrides):
    output_dir, uri = tmp_path / "busy", f"sqlite:///{tmp_path / 'mlflow.db'}"
    # A run long enough to be caught running (small batches, rare logging: seconds, not a minute).
    overrides = train_overrides(
        output_dir, uri, "train.max_steps=300", "train.checkpoint_every=25", "train.batch_size=4", "train.log_every=100"
    )
    first = start_training(train_argv(overrides), tmp_path / "first.log")
    try:
        wait_for(lambda: bool(complete_checkpoints(output_dir)) or first.poll() is not None, 240, "a checkpoint")
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        config_before = (output_dir / "config.yaml").read_bytes()
        second = run_training(train_argv([*overrides, "train.learning_rate=1.0e-3"], resume=True))
        assert first.poll() is None, "the first run ended before the second was refused: nothing was tested"
    finally:
        first.wait(timeout=300)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    (error,) = error_lines(second.stderr)
    assert f"output_dir {output_dir} is in use by a running job (pid {first.pid})" in error
    assert (output_dir / "config.yaml").read_bytes() == config_before  # its other learning rate was not written
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert (output_dir / "model" / "audio.json").is_file()
    # The lock went with the first run: resuming its finished folder is allowed again.
    again = run_training(train_argv(overrides, resume=True))
    assert again.returncode == 0, again.stderr[-2000:]


def test_a_second_run_into_a_used_folder_is_refused_and_changes_nothing(tiny_config, capsys):
    from training.train import main

    config = tiny_config("train.max_steps=2", "train.checkpoint_every=2", *FAST)
    first = _train(config)
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(TINY_CONFIG), *_as_overrides(config), "train.max_steps=3"])
    assert exit_info.value.code == 2
    (error,) = error_lines(capsys.readouterr().err)
    assert "already holds a run" in error and "--resume latest" in error
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before


def _train(config) -> Path:
    from training.train import train

    return train(config, show_progress=False).output_dir


def _as_overrides(config) -> list[str]:
    """The overrides that rebuild `config` from configs/tiny.yaml (those the tiny_config fixture sets)."""
    return [
        f"output_dir={config.output_dir}",
        f"data.source={config.data.source}",
        f"data.cache_dir={config.data.cache_dir}",
        f"tracking.tracking_uri={config.tracking.tracking_uri}",
        "train.sample_classes=[0]",
        "sample.steps=2",
        "sample.griffin_lim_iters=2",
    ]
