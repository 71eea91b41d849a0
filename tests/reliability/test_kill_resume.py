"""`kill -9` of a training process at a random moment, then `--resume latest`: nothing lost, nothing different."""

from __future__ import annotations

import random
import shutil
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from tests.reliability.conftest import run_training, start_training, train_argv, wait_for
from training.checkpoints import MARKER, complete_checkpoints

STEPS = ["train.max_steps=24", "train.checkpoint_every=4", "train.checkpoints_keep=10"]
WEIGHTS = Path("model") / "unet" / "diffusion_pytorch_model.safetensors"


def losses_and_runs(tracking_uri: str) -> tuple[dict[int, set[float]], list]:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("esc50-tiny")
    runs = client.search_runs([experiment.experiment_id])
    losses: dict[int, set[float]] = {}
    for run in runs:
        for metric in client.get_metric_history(run.info.run_id, "train/loss"):
            losses.setdefault(metric.step, set()).add(metric.value)
    return losses, runs


@pytest.mark.slow
def test_kill_9_then_resume_ends_as_an_uninterrupted_run(tmp_path, train_overrides):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference_uri, killed_uri = f"sqlite:///{tmp_path / 'reference.db'}", f"sqlite:///{tmp_path / 'killed.db'}"
    # Both runs at once, one thread each: the uninterrupted reference and the one we kill.
    reference = start_training(train_argv(train_overrides(reference_dir, reference_uri, *STEPS)), tmp_path / "ref.log")
    victim = start_training(train_argv(train_overrides(killed_dir, killed_uri, *STEPS)), tmp_path / "victim.log")

    second = killed_dir / "checkpoints" / "step_000008" / MARKER
    wait_for(lambda: second.is_file() or victim.poll() is not None, 180, "the second checkpoint")
    delay = random.uniform(0.0, 0.4)  # anywhere in the steps that follow, mid-save included
    print(f"killing {delay:.2f}s after the second checkpoint")
    time.sleep(delay)
    assert victim.poll() is None, "training ended before it was killed: raise train.max_steps"
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL

    # Damage the newest checkpoint as a disk error would (a file cut short after the marker was written),
    # and add one an older version left half-written (no marker): both must be passed over, with a warning.
    kept = complete_checkpoints(killed_dir)
    assert len(kept) >= 2
    newest = kept[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    half_written = newest.with_name(f"step_{int(newest.name.split('_')[1]) + 1:06d}")
    half_written.mkdir()
    shutil.copy(kept[-2] / "model.safetensors", half_written)

    resumed = run_training(train_argv(train_overrides(killed_dir, killed_uri, *STEPS), resume=True))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping incomplete checkpoint {half_written}" in resumed.stderr
    assert f"checkpoint {newest} is unreadable (model.safetensors is truncated" in resumed.stderr
    assert f"Loading states from {kept[-2]}" in resumed.stderr
    assert reference.wait(timeout=240) == 0, (tmp_path / "ref.log").read_text()[-3000:]

    # Same final (EMA) parameters, bit for bit.
    expected, actual = load_file(reference_dir / WEIGHTS), load_file(killed_dir / WEIGHTS)
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not expected[name].equal(actual[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"

    # Same loss at every step in MLflow: the steps run twice (after the kill) logged the same values again.
    expected_losses, _ = losses_and_runs(reference_uri)
    actual_losses, runs = losses_and_runs(killed_uri)
    assert sorted(expected_losses) == list(range(1, 25))
    assert actual_losses == expected_losses
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert not list((killed_dir / "checkpoints").glob(".*partial")), "a staging folder was left behind"
