"""MLflow: where runs go, and logging that survives a tracking server going away for a while."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from core.errors import UserError

log = logging.getLogger(__name__)


def redact_uri(uri: str) -> str:
    """Drop credentials from a URI (`http://user:token@host` -> `http://***@host`, `?token=...`) before it is shown."""
    return re.sub(r"(token|password|secret)=[^&]+", r"\1=***", redact_text(uri), flags=re.IGNORECASE)


def configure_tracking(tracking_uri: str = "", experiment: str = "", check_server: bool = True) -> str:
    """Point MLflow at `tracking_uri` (else MLFLOW_TRACKING_URI, else MLflow's default) and the experiment.

    A server that does not answer fails here, before any work, rather than after an hour of training.
    """
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = _credentials_to_environment(mlflow.get_tracking_uri())
    mlflow.set_tracking_uri(uri)
    if check_server and uri.startswith(("http://", "https://")):
        _check_server(uri)
    if experiment:
        try:
            if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(experiment) is None:
                # MLflow's default artifact root is ./mlruns in whatever folder the job runs from;
                # beside the database file they stay together, wherever `mlflow ui` is started.
                artifacts = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
                with contextlib.suppress(Exception):  # a concurrent job may create it first
                    mlflow.create_experiment(experiment, artifact_location=artifacts.as_uri())
            mlflow.set_experiment(experiment)
        except Exception as error:
            raise UserError(
                f"cannot use MLflow experiment '{experiment}' at {redact_uri(uri)}: {_one_line(error)}"
            ) from None
    return uri


def _credentials_to_environment(uri: str) -> str:
    """`http://user:token@host` -> `http://host` with MLFLOW_TRACKING_USERNAME/PASSWORD set: MLflow sends the same
    basic auth, but its messages (errors, the "View run at" link it prints) then never carry the token."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not (parts.username and parts.password):
        if parts.username:  # a credential MLflow cannot move: at least keep it out of what MLflow prints
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""  # IPv6
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def _check_server(uri: str, timeout: float = 5.0) -> None:
    import requests

    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        response.raise_for_status()
    except Exception as error:
        raise UserError(
            f"MLflow tracking server {redact_uri(uri)} is not reachable ({_one_line(error)[:120]}); "
            "start it, or unset MLFLOW_TRACKING_URI to use the local ./mlflow.db"
        ) from None


def _one_line(error: BaseException) -> str:
    # MLflow's and requests' errors quote the full URL, credentials included.
    return redact_text(" ".join(str(error).split())) or type(error).__name__


def redact_text(text: str) -> str:
    """Credentials of every URL in `text` replaced by *** (`http://user:token@host` -> `http://***@host`)."""
    return re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@", r"\1***@", text)


def store_for_ui(uri: str = "") -> str:
    """The tracking URI with relative paths made absolute: `mlflow ui --backend-store-uri` it from any folder."""
    import mlflow

    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:  # a plain folder (MLflow's file store)
        return str(Path(uri).resolve())
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://")).resolve().as_uri()
    return uri


def where_to_look(run_id: str, label: str = "MLflow run", uri: str = "") -> str:
    """The last lines of a command: the run id, and how to open it (a UI command that works from any folder).
    `uri`: the store the run is in (default: the current tracking URI)."""
    import sys

    import mlflow

    uri = store_for_ui(uri)
    try:
        experiment_id = mlflow.tracking.MlflowClient(uri).get_run(run_id).info.experiment_id
    except Exception:
        experiment_id = ""
    if uri.startswith(("http://", "https://")):
        page = f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        return f"{label}: {run_id}\n  open {redact_uri(page)}"
    page = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"
    return (f"{label}: {run_id}\n  view it: {sys.executable} -m mlflow ui --backend-store-uri {redact_uri(uri)}\n"
            f"  then open {page}")  # fmt: skip


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except Exception:
        return "unknown"


@contextlib.contextmanager
def fail_fast_requests(timeout_seconds: int = 5) -> Iterator[None]:
    """One quick try per MLflow HTTP call instead of the client's default (7 retries with backoff,
    minutes against a stopped server): in the training loop a failed call costs nothing, since
    `RunLogger` keeps the metrics and sends them later. The final flush uses MLflow's defaults."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_seconds)}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RunLogger:
    """Logs to one MLflow run; metrics that fail to send (server down) are kept and re-sent later.

    Training must not stop because the tracking server restarts, and no point of the loss curve
    may be lost: failed batches wait in `pending` and go out, in order, with the next call.
    """

    def __init__(self, run_id: str, retry_seconds: float = 0.0, retry_interval: float = 10.0):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient()
        self.pending: list[Any] = []
        self.retry_seconds = retry_seconds
        self.retry_interval = retry_interval  # after a failure, metrics only queue up for this long
        self._next_attempt = 0.0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
        if time.monotonic() < self._next_attempt:
            return  # the server failed recently: keep training, send everything with a later call
        with fail_fast_requests():
            sent = self.flush()
        self._next_attempt = 0.0 if sent else time.monotonic() + self.retry_interval

    def flush(self, deadline_seconds: float | None = None) -> bool:
        """Send what is pending; True when nothing is left. Retries until `deadline_seconds` pass."""
        deadline = time.monotonic() + (deadline_seconds if deadline_seconds is not None else self.retry_seconds)
        while self.pending:
            try:
                while self.pending:  # MLflow's batch limit is 1000; drop each batch once sent, so none is sent twice
                    self.client.log_batch(self.run_id, metrics=self.pending[:1000])
                    del self.pending[:1000]
            except Exception as error:
                if time.monotonic() >= deadline:
                    log.warning(
                        "MLflow unreachable (%s); %d metric values kept for later",
                        _one_line(error)[:100],
                        len(self.pending),
                    )
                    return False
                time.sleep(1.0)
        return True

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._retrying(lambda: self.client.log_artifacts(self.run_id, str(local_dir), artifact_path))

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._retrying(lambda: self.client.log_artifact(self.run_id, str(local_path), artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._retrying(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def set_terminated(self, status: str) -> None:
        self._retrying(lambda: self.client.set_terminated(self.run_id, status))

    def _retrying(self, action, attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                action()
                return
            except Exception as error:
                if attempt == attempts - 1:
                    log.warning("MLflow call failed after %d attempts: %s", attempts, _one_line(error)[:200])
                else:
                    time.sleep(2.0 * (attempt + 1))
