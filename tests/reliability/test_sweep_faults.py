"""Sweep faults, as the real command: a trial's Ray worker killed, then the sweep driver killed.

Each sweep starts its own local Ray and its own MLflow server over a SQLite store, as it does for
users whose tracking URI is not http, so the tests also see what those listen on and that a
killed driver takes them down with it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.reliability.conftest import subprocess_env, wait_for
from tests.test_sweep_helpers import ABLATION_TINY, REPO, child_runs, tiny_overrides
from training.checkpoints import MARKER
from tuning.spec import load_sweep
from tuning.trial import KEY_TAG

pytestmark = pytest.mark.slow

# Long enough to be caught mid-training, with a checkpoint every 10 steps to come back to.
TRAINING = ["train.max_steps=80", "train.checkpoint_every=10", "train.log_every=2", "sweep.max_concurrent_trials=1"]


def sweep_overrides(tmp_path: Path, name: str, esc50_mini: Path, cache: Path, losses: str) -> list[str]:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid = [f"sweep.grid.train.loss={losses}", "sweep.grid.model.attention=[false]", "sweep.grid.data.normalize=[true]"]
    return tiny_overrides(tmp_path, name, store, esc50_mini, cache) + grid + TRAINING


def start_sweep(tmp_path: Path, overrides: list[str], log_name: str, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "tuning.sweep", "--config", str(ABLATION_TINY), "--num-cpus", "2", *flags]
    environment = dict(subprocess_env(), PYTHONPATH=str(REPO))
    environment.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the sweep decides what its Ray listens on
    with open(tmp_path / log_name, "wb") as log:
        # Its own session: whatever the test leaves running is stopped with one killpg at the end.
        return subprocess.Popen(
            [*command, *overrides], cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def finish(process: subprocess.Popen, log_file: Path, timeout: float = 480) -> str:
    try:
        process.wait(timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return log_file.read_text(errors="replace")


def newest_checkpoint_step(trial: Path) -> int:
    steps = [json.loads(m.read_text())["step"] for m in trial.glob(f"checkpoints/step_*/{MARKER}")]
    return max(steps, default=0)


def training_midway(sweep_dir: Path) -> Path | None:
    """The trial folder that has a complete training checkpoint but no final model yet."""
    for trial in sorted(sweep_dir.glob("trials/*")):
        if newest_checkpoint_step(trial) and not (trial / "model").exists():
            return trial
    return None


def wait_until_training_midway(driver: subprocess.Popen, sweep_dir: Path, log_file: Path) -> tuple[Path, int]:
    """Wait for a trial to have a checkpoint but no model yet; returns that trial folder and checkpoint's step."""
    wait_for(lambda: training_midway(sweep_dir) is not None or driver.poll() is not None, 400, "a checkpoint")
    assert driver.poll() is None, log_file.read_text()[-3000:]
    trial = training_midway(sweep_dir)
    return trial, newest_checkpoint_step(trial)


def sweep_child_runs(tmp_path: Path, sweep_dir: Path, overrides: list[str]) -> list:
    """The child runs under the sweep's parent run, read from its SQLite store (its server is gone)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent_run_id = json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"]
    return child_runs(load_sweep(ABLATION_TINY, overrides), parent_run_id)


def trial_worker(driver: psutil.Process) -> psutil.Process | None:
    """The Ray worker process running a trial (Ray names it after the Tune trainable's actor)."""
    for process in driver.children(recursive=True):
        try:
            if process.name().startswith("ray::ImplicitFunc"):
                return process
        except psutil.NoSuchProcess:
            continue
    return None


def listening_addresses(processes: list[psutil.Process]) -> dict[str, set[str]]:
    listening: dict[str, set[str]] = {}
    for process in processes:
        try:
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    listening.setdefault(process.name(), set()).add(connection.laddr.ip)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return listening


def is_loopback(address: str) -> bool:
    parsed = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(parsed, "ipv4_mapped", None)
    return (mapped or parsed).is_loopback


def metric_steps(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def assert_resumed_not_restarted(client, run, checkpoint_step: int) -> None:
    """The run picked training up at a checkpoint once, and never ran the steps before it twice."""
    resumed = metric_steps(client, run.info.run_id, "train/resumed_from_step")
    assert len(resumed) == 1 and resumed[0][1] >= checkpoint_step > 0, resumed
    loss_steps = [step for step, _ in metric_steps(client, run.info.run_id, "train/loss")]
    before = [step for step in loss_steps if step <= resumed[0][1]]
    assert before and len(before) == len(set(before)), loss_steps  # a restart from 0 would log these twice
    assert max(loss_steps) == 80 and run.info.status == "FINISHED"


def test_a_killed_trial_worker_is_retried_from_its_last_checkpoint(
    tmp_path: Path, esc50_mini: Path, spectrogram_cache_dir: Path
):
    import mlflow

    overrides = sweep_overrides(tmp_path, "worker-killed", esc50_mini, spectrogram_cache_dir, "[l2]")
    sweep_dir = tmp_path / "sweeps" / "worker-killed"
    driver = start_sweep(tmp_path, overrides, "sweep.log")
    try:
        _, checkpoint_step = wait_until_training_midway(driver, sweep_dir, tmp_path / "sweep.log")
        worker = trial_worker(psutil.Process(driver.pid))
        assert worker is not None, [p.name() for p in psutil.Process(driver.pid).children(recursive=True)]
        worker.send_signal(signal.SIGKILL)  # what the OOM killer or a lost node does
        worker.wait(30)
    finally:
        output = finish(driver, tmp_path / "sweep.log")
    assert driver.returncode == 0, output[-3000:]
    assert "1/1 trials finished" in output
    assert list(sweep_dir.glob("tune/*/error.txt")), "Ray never saw the trial fail"

    (run,) = sweep_child_runs(tmp_path, sweep_dir, overrides)  # the retry continued the same run
    assert_resumed_not_restarted(mlflow.tracking.MlflowClient(), run, checkpoint_step)
    assert {"eval/fd_esc", "eval/esc_top1"} <= set(run.data.metrics)


def test_a_killed_sweep_driver_takes_its_services_down_and_resume_completes_it(
    tmp_path: Path, esc50_mini: Path, spectrogram_cache_dir: Path
):
    import mlflow

    overrides = sweep_overrides(tmp_path, "driver-killed", esc50_mini, spectrogram_cache_dir, "[l1,l2]")
    sweep_dir = tmp_path / "sweeps" / "driver-killed"
    driver = start_sweep(tmp_path, overrides, "first.log")
    try:
        interrupted, checkpoint_step = wait_until_training_midway(driver, sweep_dir, tmp_path / "first.log")
        services = psutil.Process(driver.pid).children(recursive=True)
        listening = listening_addresses(services)
        servers = [p for p in services if p.cmdline()[1:4] == ["-m", "mlflow", "server"]]
        # Ray's agents (runtime env, dashboard) keep retrying the dead GCS for a minute or more, then
        # exit; they hold nothing of the sweep's. Everything else must go at once.
        must_end = [p for p in services if not (p.name().startswith("ray::") and "Agent" in p.name())]
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        # Ray, the trial worker and the MLflow server end with the driver: nothing is left holding
        # ports, the store, or the trial folder that the resumed sweep will write to.
        _, survivors = psutil.wait_procs(must_end, timeout=60)
    finally:
        finish(driver, tmp_path / "first.log")
    running = [p for p in survivors if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # zombies: dead
    assert not running, [(p.pid, p.name()) for p in running]
    assert len(servers) == 1 and {"gcs_server", "raylet"} <= set(listening), listening
    not_loopback = {name: ips for name, ips in listening.items() if not all(map(is_loopback, ips))}
    assert not not_loopback, f"listening beyond 127.0.0.1: {not_loopback}"

    resumed = start_sweep(tmp_path, overrides, "resumed.log", "--resume")
    output = finish(resumed, tmp_path / "resumed.log")
    assert resumed.returncode == 0, output[-3000:]
    assert "2/2 trials finished" in output
    assert len(list(sweep_dir.glob("trials/*/evaluation/metrics.json"))) == 2

    runs = sweep_child_runs(tmp_path, sweep_dir, overrides)
    assert sorted(run.data.tags[KEY_TAG] for run in runs) == sorted(p.name for p in sweep_dir.glob("trials/*"))
    assert len(runs) == 2  # complete and unique: the interrupted trial continued its own run
    (continued,) = [run for run in runs if run.data.tags[KEY_TAG] == interrupted.name]
    assert_resumed_not_restarted(mlflow.tracking.MlflowClient(), continued, checkpoint_step)
    parent_run_id = json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"]
    assert mlflow.get_run(parent_run_id).info.status == "FINISHED"
    assert (sweep_dir / "report" / "report.md").is_file()
