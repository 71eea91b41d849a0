"""Trials that span two processes (`sweep.workers_per_trial=2`, Ray Train's `TorchTrainer`, gloo) on a two-node
Ray cluster: both workers train, one MLflow child run per trial, scores; a worker SIGKILLed after a checkpoint
is retried from it to the same final weights as an uninterrupted trial."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.test_sweep_helpers import child_runs, tiny_sweep
from training.checkpoints import MARKER
from tuning.sweep import run_sweep

pytestmark = pytest.mark.slow


def ray_train_workers() -> list[psutil.Process]:
    """This test's Ray Train worker processes (the cluster's nodes are its children)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name().startswith("ray::RayTrainWorker"):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def kill_a_worker_after_the_first_checkpoint(trials: Path, killed: dict, stop: threading.Event) -> None:
    """SIGKILL one worker of the first trial to checkpoint (what the OOM killer or a lost node does)."""
    while not stop.is_set():
        for marker in trials.glob(f"*/checkpoints/step_*/{MARKER}"):
            trial = marker.parents[2]
            if (trial / "model").exists():
                continue  # already past training: too late for this one
            workers = ray_train_workers()
            if len(workers) == 2:
                victim = max(workers, key=lambda process: process.pid)
                victim.send_signal(signal.SIGKILL)
                killed.update(trial=trial.name, step=int(marker.parent.name.removeprefix("step_")))
                return
        time.sleep(0.05)


def model_tensors(trial: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(trial.glob("model/**/*.safetensors"))
    return {path.relative_to(trial).as_posix(): load_file(path) for path in files}


def test_a_two_worker_trial_trains_on_both_and_a_killed_worker_resumes_to_the_same_weights(
    tmp_path: Path, esc50_mini: Path, spectrogram_cache_dir: Path
):
    import mlflow
    import ray
    import torch
    from ray.cluster_utils import Cluster

    from tuning.tracking_server import tracking_server

    # Two one-CPU nodes and one-CPU workers: a two-worker trial can only start by using both nodes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    killed: dict = {}
    stop = threading.Event()
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        with tracking_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "server.log") as uri:
            # Two trials that train alike: they differ only in the vocoder's iterations, used after training.
            spec = tiny_sweep(
                tmp_path, "two-workers", uri, esc50_mini, spectrogram_cache_dir,
                "sweep.grid.train.loss=[l2]", "sweep.grid.model.attention=[false]", "sweep.grid.data.normalize=[true]",
                "sweep.grid.sample.griffin_lim_iters=[4,5]", "sweep.workers_per_trial=2", "sweep.cpus_per_trial=2",
                "train.max_steps=40", "train.checkpoint_every=10", "train.log_every=1",
            )  # fmt: skip
            trials = tmp_path / "sweeps" / "two-workers" / "trials"
            watcher = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, args=(trials, killed, stop))
            watcher.start()
            outcome = run_sweep(spec, address=cluster.address)
            stop.set()
            watcher.join()
            assert (outcome.finished, outcome.errored) == (2, []), outcome
            assert killed, "no worker was caught mid-training"
            assert list((tmp_path / "sweeps" / "two-workers").glob("tune/*/error.txt")), "Ray never saw it fail"

            mlflow.set_tracking_uri(uri)
            client = mlflow.tracking.MlflowClient()
            runs = {Path(run.data.tags["output_dir"]).name: run for run in child_runs(spec, outcome.parent_run_id)}
            assert len(runs) == 2, "a retried trial started a second child run"
            for name, run in runs.items():
                assert run.data.tags["train.processes"] == "2" and run.info.status == "FINISHED", name
                assert {"eval/fd_esc", "eval/esc_top1"} <= set(run.data.metrics), name
                checkpoint = next((trials / name / "checkpoints").glob("step_*"))
                assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
            retried = runs[killed["trial"]]
            resumed = [m.value for m in client.get_metric_history(retried.info.run_id, "train/resumed_from_step")]
            assert len(resumed) == 1 and resumed[0] >= killed["step"], (resumed, killed)
            losses = [m.step for m in client.get_metric_history(retried.info.run_id, "train/loss")]
            assert sorted(losses) == list(range(1, 41)), "steps lost or logged twice"

        uninterrupted = next(name for name in runs if name != killed["trial"])
        weights, reference = model_tensors(trials / killed["trial"]), model_tensors(trials / uninterrupted)
        assert weights and weights.keys() == reference.keys()
        for file, tensors in weights.items():
            for key, tensor in tensors.items():
                assert torch.equal(tensor, reference[file][key]), f"{file}:{key} differs after the retry"
    finally:
        stop.set()
        ray.shutdown()
        cluster.shutdown()
