"""Fixtures for the fault tests: training as a real subprocess, a real MLflow server on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests

from tests.conftest import REPO, TINY_CONFIG

# Fast ends of a run: one class sampled with 2 DDIM steps and 2 Griffin-Lim iterations; every loss logged.
FAST = ["train.sample_classes=[0]", "sample.steps=2", "sample.griffin_lim_iters=2", "train.log_every=1"]


def subprocess_env() -> dict[str, str]:
    # One thread per run: results are bit-for-bit comparable between runs, and two runs fit on 2 cores.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    return env


def train_argv(overrides: list[str], resume: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "training.train", "--config", str(TINY_CONFIG), "--no-progress", *overrides]
    return argv + (["--resume", "latest"] if resume else [])


def start_training(argv: list[str], log_file: Path, **popen_kwargs) -> subprocess.Popen:
    with open(log_file, "wb") as log:
        return subprocess.Popen(
            argv, cwd=REPO, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, **popen_kwargs
        )


def run_training(argv: list[str], timeout: float = 240, **run_kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, **run_kwargs
    )


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def train_overrides(esc50_mini: Path, spectrogram_cache_dir: Path) -> Callable[..., list[str]]:
    """`train_overrides(output_dir, tracking_uri, "train.max_steps=8")`: the tiny config, shared spectrogram cache."""

    def make(output_dir: Path, tracking_uri: str, *extra: str) -> list[str]:
        return [
            f"output_dir={output_dir}",
            f"data.source={esc50_mini}",
            f"data.cache_dir={spectrogram_cache_dir}",
            f"tracking.tracking_uri={tracking_uri}",
            *FAST,
            *extra,
        ]

    return make


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store; stop() and start() again keep the same port and data."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        argv = [
            str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
        ]  # fmt: skip
        # The job runner (huey consumers) is not needed and doubles the start-up time.
        env = dict(subprocess_env(), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with open(self.root / "server.log", "ab") as log:
            # Its own session: stop() ends the server and the uvicorn worker it spawns, nothing else.
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.healthy, timeout, f"mlflow server on port {self.port} (log: {self.root / 'server.log'})")

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"mlflow server exited with {self.process.returncode}; see {self.root / 'server.log'}")
        try:
            return requests.get(self.uri + "/health", timeout=1).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        try:  # the worker may outlive its parent briefly
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_for(lambda: not self._port_open(), 15, f"port {self.port} to close")

    def _port_open(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    root = tmp_path / "mlflow-server"
    root.mkdir()
    server = MlflowServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def copy_esc50(esc50_mini: Path, source: Path, clips: int) -> pd.DataFrame:
    """A small writable ESC-50 folder at `source`: the first `clips` real clips and their CSV rows."""
    (source / "audio").mkdir(parents=True)
    (source / "meta").mkdir()
    table = pd.read_csv(esc50_mini / "meta" / "esc50.csv").head(clips)
    for name in table["filename"]:
        shutil.copy(esc50_mini / "audio" / name, source / "audio" / name)
    table.to_csv(source / "meta" / "esc50.csv", index=False)
    return table
