"""MLflow: where runs go, and logging that survives a tracking server going away for a while."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from core.errors import UserError

log = logging.getLogger(__name__)


def redact_uri(uri: str) -> str:
    """Drop credentials from a URI (`http://user:token@host` -> `http://***@host`) before it is shown."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return re.sub(r"(token|password|secret)=[^&]+", r"\1=***", uri, flags=re.IGNORECASE)


def configure_tracking(tracking_uri: str = "", experiment: str = "", check_server: bool = True) -> str:
    """Point MLflow at `tracking_uri` (else MLFLOW_TRACKING_URI, else MLflow's default) and the experiment.

    A server that does not answer fails here, before any work, rather than after an hour of training.
    """
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    if check_server and uri.startswith(("http://", "https://")):
        _check_server(uri)
    if experiment:
        try:
            mlflow.set_experiment(experiment)
        except Exception as error:
            raise UserError(
                f"cannot use MLflow experiment '{experiment}' at {redact_uri(uri)}: {_one_line(error)}"
            ) from None
    return uri


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
    return " ".join(str(error).split()) or type(error).__name__


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except Exception:
        return "unknown"


class RunLogger:
    """Logs to one MLflow run; metrics that fail to send (server down) are kept and re-sent later.

    Training must not stop because the tracking server restarts, and no point of the loss curve
    may be lost: failed batches wait in `pending` and go out, in order, with the next call.
    """

    def __init__(self, run_id: str, retry_seconds: float = 0.0):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient()
        self.pending: list[Any] = []
        self.retry_seconds = retry_seconds

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
        self.flush()

    def flush(self, deadline_seconds: float | None = None) -> bool:
        """Send what is pending; True when nothing is left. Retries until `deadline_seconds` pass."""
        deadline = time.monotonic() + (deadline_seconds if deadline_seconds is not None else self.retry_seconds)
        while self.pending:
            try:
                for start in range(0, len(self.pending), 1000):  # MLflow's batch limit
                    self.client.log_batch(self.run_id, metrics=self.pending[start : start + 1000])
                self.pending.clear()
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
