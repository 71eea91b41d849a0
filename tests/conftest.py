"""Shared fixtures: the real esc50-mini data, a tiny config factory, one tiny trained model per session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# laion_clap (imported by frechet_audio_distance too) retries the HF hub for minutes unless offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# Hypothesis keeps its example database in ./.hypothesis by default: in the checkout. Kept in /tmp instead.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "esc50-hypothesis"))
# Under pytest-xdist (`make test` runs two workers on CI's two cores) each worker's torch gets one thread, and so
# does every process it starts: two workers with a thread pool each would fight for the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Every Ray the tests start listens on 127.0.0.1 only (see tuning/cluster.py); set before ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parents[1]
ESC50_MINI = REPO.parent / "shared" / "data" / "esc50-mini"
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def esc50_mini() -> Path:
    assert (ESC50_MINI / "meta" / "esc50.csv").is_file(), f"test data missing: {ESC50_MINI} (../shared beside the repo)"
    return ESC50_MINI


@pytest.fixture(scope="session")
def spectrogram_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One spectrogram cache for the whole session: esc50-mini is transformed once per setting."""
    return tmp_path_factory.mktemp("spectrogram-cache")


@pytest.fixture
def tiny_config(tmp_path: Path, esc50_mini: Path, spectrogram_cache_dir: Path) -> Callable:
    """`tiny_config("train.max_steps=5", ...)`: configs/tiny.yaml in tmp_path, tracking into a local SQLite store."""
    from core.config import load_config

    def make(*overrides: str, output_dir: Path | None = None):
        base = [
            f"output_dir={output_dir or tmp_path / 'run'}",
            f"data.source={esc50_mini}",
            f"data.cache_dir={spectrogram_cache_dir}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "train.sample_classes=[0,10]",
        ]
        return load_config(TINY_CONFIG, base + list(overrides))

    return make


@pytest.fixture(scope="session")
def trained_tiny_model(tmp_path_factory: pytest.TempPathFactory, esc50_mini: Path, spectrogram_cache_dir: Path) -> Path:
    """A tiny model trained for a few steps (not a good model: a real one, to generate from)."""
    from core.config import load_config
    from training.train import train

    root = tmp_path_factory.mktemp("trained-tiny")
    config = load_config(
        TINY_CONFIG,
        [
            f"output_dir={root / 'run'}",
            f"data.source={esc50_mini}",
            f"data.cache_dir={spectrogram_cache_dir}",
            f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            "train.max_steps=20",
            "train.checkpoint_every=20",
            "train.sample_classes=[0]",
        ],
    )
    return train(config, show_progress=False).output_dir


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_server(root: Path, port: int | None = None):
    """A real `mlflow server` on 127.0.0.1 over a SQLite store in `root`; returns (process, uri)."""
    import subprocess
    import sys
    import time

    import requests

    port = port or free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    log = open(root / f"server-{port}.log", "ab")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited early; see {root}/server-{port}.log")
        try:
            if requests.get(f"{uri}/health", timeout=2).ok:
                return process, uri
        except requests.RequestException:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("mlflow server did not become healthy within 90 s")


def stop_process_group(process) -> None:
    import signal
    import subprocess

    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real tracking server for the session, stopped at the end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    process, uri = start_mlflow_server(root)
    yield uri
    stop_process_group(process)


# Tests leave nothing in the checkout: what they write goes to tmp_path. The session fails if a new file or
# folder appears in the repository (an MLflow ./mlruns, a default .cache/ or outputs/), naming it.
_BUILD_LEFTOVERS = (".venv", ".pytest_cache", ".ruff_cache", "__pycache__", ".egg-info")


def _checkout_entries() -> set[str]:
    import subprocess

    try:
        listed = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"], cwd=REPO, capture_output=True,
            text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return set()
    entries = {line[3:].strip() for line in listed.splitlines() if line[:2] in ("??", "!!")}
    return {entry for entry in entries if not any(part in entry for part in _BUILD_LEFTOVERS)}


def pytest_sessionstart(session) -> None:
    session.config._checkout_before = _checkout_entries()


def pytest_sessionfinish(session, exitstatus) -> None:
    before = getattr(session.config, "_checkout_before", None)
    if before is None:
        return
    left = sorted(_checkout_entries() - before)
    if left:
        print(f"\ntests left files in the checkout {REPO}: {', '.join(left)}")
        session.exitstatus = 1
