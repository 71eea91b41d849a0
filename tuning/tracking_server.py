"""An MLflow server for the length of a sweep, when the tracking URI is a file or SQLite store.

Concurrent trials writing one SQLite file fail with "database is locked", and a file store on one
node is invisible to the others; through one server every trial logs to the same store safely.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from core.errors import UserError
from core.secrets import redact_uri


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def absolute_store_uri(uri: str) -> str:
    """`sqlite:///mlflow.db` and relative paths mean the caller's folder: pin them before trials change folder."""
    if is_server_uri(uri) or uri.startswith("databricks"):
        return uri
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        return uri if path.startswith("/") or path == ":memory:" else f"sqlite:///{Path(path).resolve()}"
    if uri.startswith("file:"):
        path = uri[len("file://") :] if uri.startswith("file://") else uri[len("file:") :]
        return f"file://{Path(path).resolve()}"
    if "://" not in uri:
        return f"file://{Path(uri).resolve()}"
    return uri


def store_folder(uri: str) -> Path:
    """The folder a local store lives in (the served artifacts go beside it)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent
    if uri.startswith("file://"):
        return Path(uri[len("file://") :]).parent
    return Path.cwd()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def tracking_server(store_uri: str, log_path: Path, startup_seconds: float = 180.0) -> Iterator[str]:
    """Serve `store_uri` on 127.0.0.1 (a free port) until the block ends; yields the http URI.

    An http(s) URI is already a server and is yielded unchanged.
    """
    if is_server_uri(store_uri):
        yield store_uri
        return
    store_uri = absolute_store_uri(store_uri)
    artifacts = store_folder(store_uri) / "mlartifacts"
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", store_uri, "--artifacts-destination", str(artifacts), "--workers", "1",
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # its job runner is unused and slows the start
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
            preexec_fn=_stop_when_parent_dies(),
        )  # own session: stopped with its workers, and not by the Ctrl-C meant for the sweep
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(uri, process, log_path, store_uri, startup_seconds)
        yield uri
    finally:
        stop_process_group(process)


def _stop_when_parent_dies():
    """On Linux, a function for the child to call before exec: SIGTERM it when the sweep dies, even by kill -9.

    Without it a killed sweep leaves its server running, holding a port and the store, forever.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG in <sys/prctl.h>

    def ask_for_sigterm() -> None:
        prctl(set_parent_death_signal, signal.SIGTERM)

    return ask_for_sigterm


def _wait_until_healthy(uri: str, process: subprocess.Popen, log_path: Path, store: str, seconds: float) -> None:
    import requests

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"the MLflow server for {redact_uri(store)} exited at start: {tail[0][:200]} ({log_path})")
        try:
            if requests.get(f"{uri}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_process_group(process)
    raise UserError(f"the MLflow server for {redact_uri(store)} did not answer within {seconds:.0f} s ({log_path})")


def stop_process_group(process: subprocess.Popen, grace_seconds: float = 15.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
