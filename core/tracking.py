"""MLflow: where runs go, and logging that survives a tracking server going away for a while."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from core.errors import UserError
from core.secrets import has_credentials, redact_text, redact_uri, without_userinfo

log = logging.getLogger(__name__)


def configure_tracking(
    tracking_uri: str = "", experiment: str = "", check_server: bool = True, will_write: bool = True
) -> str:
    """Point MLflow at `tracking_uri` (else MLFLOW_TRACKING_URI, else MLflow's default) and the experiment.

    A server that does not answer fails here, before any work, rather than after an hour of training.
    """
    import mlflow

    check_launcher_run(tracking_uri)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = _credentials_to_environment(mlflow.get_tracking_uri())
    mlflow.set_tracking_uri(uri)
    if check_server and uri.startswith(("http://", "https://")):
        _check_server(uri)
    if will_write and uri.startswith("sqlite:///"):
        _check_writable_store(Path(uri.removeprefix("sqlite:///")))
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
                f"cannot use MLflow experiment '{experiment}' at {redact_uri(uri)}: {one_line_error(error)}"
            ) from None
    return uri


def check_launcher_run(configured_uri: str = "") -> None:
    """The run `mlflow run` created for this command (MLFLOW_RUN_ID), checked before the command adopts it.

    MLflow Projects records every `-P` value as a param of that run (and prints the command) before ours
    starts, so a credential passed in `-P` is already stored in plain text: the run is deleted (in a local
    store, erased with `mlflow gc`) and the command refuses, naming the safe way. A `tracking.tracking_uri` that
    names another store than the launcher's is refused too: the adopted run does not exist there."""
    run_id = os.environ.get("MLFLOW_RUN_ID", "")
    if not run_id:
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    store = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    client = MlflowClient(store)
    try:
        with fail_fast_requests(10):
            params = client.get_run(run_id).data.params
    except Exception as error:
        raise UserError(f"cannot read run {run_id}, which `mlflow run` made, in {redact_uri(store)}: "
                        f"{one_line_error(error)[:200]}") from None  # fmt: skip
    leaked = sorted(key for key, value in params.items() if has_credentials(value))
    if leaked:
        raise UserError(
            f"-P {', '.join(leaked)} holds a credential, which `mlflow run` stores in plain text as a param of "
            f"its run {run_id}: {_erase_run(client, store, run_id)}; give credentials as MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment instead"
        )
    if configured_uri and store_for_ui(without_userinfo(configured_uri)) != store_for_ui(without_userinfo(store)):
        raise UserError(
            f"tracking.tracking_uri {redact_uri(configured_uri)} is not the store `mlflow run` made this command's "
            f"run in ({redact_uri(store)}): leave it out, and set MLFLOW_TRACKING_URI for `mlflow run` instead"
        )


def _erase_run(client, store: str, run_id: str) -> str:
    """Have the run deleted (in a store on this machine, erased with `mlflow gc`); says what will be done.

    Only a run this launch made (a PROJECT run with no metrics yet) is erased; any other (`mlflow run
    --run-id` of a run with history) is left for its owner to clean. `mlflow run` waits on this command to
    mark its run FAILED, and fails with a traceback if the run is gone by then: a detached process erases it
    once `mlflow run` (our parent) has exited, and prints what it did."""
    import sys

    try:
        run = client.get_run(run_id)
    except Exception as error:
        return f"reading it failed ({one_line_error(error)[:120]}): delete it yourself (`mlflow runs delete`)"
    if run.data.metrics or run.data.tags.get("mlflow.source.type") != "PROJECT":
        return "the run has a history, so it is left as it is: delete the param's run yourself or rotate the secret"
    parent = os.getppid()
    if parent <= 1:
        return erase_run(store, run_id)
    code = f"from core.tracking import erase_run; print(erase_run(run_id={run_id!r}, after_pid={parent}))"
    # The store goes in the environment, never on a command line (which `ps` shows to every user).
    subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdin=subprocess.DEVNULL,
                     env={**os.environ, "MLFLOW_TRACKING_URI": store})  # fmt: skip
    return "it is being erased once `mlflow run` exits (a line says when)"


def erase_run(store: str = "", run_id: str = "", after_pid: int | None = None, wait_seconds: float = 600) -> str:
    """Delete the run `run_id` (after process `after_pid` has exited, within `wait_seconds`) and, in a local
    store, erase it for good; `store` defaults to $MLFLOW_TRACKING_URI. Says what was done."""
    from mlflow.tracking import MlflowClient

    store = store or os.environ.get("MLFLOW_TRACKING_URI", "")
    waited = time.monotonic() + wait_seconds
    while after_pid is not None and _alive(after_pid) and time.monotonic() < waited:
        time.sleep(0.5)
    try:
        with fail_fast_requests(10, retries=2):
            MlflowClient(store).delete_run(run_id)
    except Exception as error:
        return f"run {run_id}: deleting it failed ({one_line_error(error)[:120]}): delete it with `mlflow runs delete`"
    if store.startswith(("http://", "https://")):
        return f"run {run_id} is deleted (the server's admin erases it with `mlflow gc --run-ids {run_id}`)"
    from mlflow.cli import gc  # `mlflow gc`, called here: the store never appears on a command line

    try:
        gc.main(["--backend-store-uri", store, "--run-ids", run_id], standalone_mode=False)
    except Exception as error:
        return f"run {run_id} is deleted; erasing it failed ({one_line_error(error)[:120]}): run `mlflow gc`"
    return f"run {run_id} is erased from the store"


def _alive(pid: int) -> bool:
    try:  # an exited process its parent has not reaped yet (a zombie) has ended all the same
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


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


def _check_writable_store(database: Path) -> None:
    """A SQLite store must take writes (the file, and its folder for SQLite's journal): a read-only one fails
    here, in one line, not with a SQLAlchemy traceback when the first run is created after the data build."""
    folder = database.resolve().parent
    try:
        if database.exists():
            with open(database, "ab"):
                pass
        probe = folder / f".mlflow-write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"MLflow store sqlite:///{database} is not writable ({error.strerror or error}); "
            "point tracking.tracking_uri at a store you can write"
        ) from None


def _check_server(uri: str, timeout: float = 5.0) -> None:
    import requests
    from mlflow.tracking import MlflowClient

    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        response.raise_for_status()
        # /health answers while the API may fail or stall: one real call, one quick try, a short timeout.
        with fail_fast_requests(int(timeout)):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:
        raise UserError(
            f"MLflow tracking server {redact_uri(uri)} is not reachable ({one_line_error(error)[:120]}); "
            "start it, or unset MLFLOW_TRACKING_URI to use the local ./mlflow.db"
        ) from None


def one_line_error(error: BaseException) -> str:
    """An MLflow or requests error on one line, credentials redacted (their messages quote the full URL)."""
    return redact_text(" ".join(str(error).split())) or type(error).__name__


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
        with fail_fast_requests(5):  # a failing server must not hold the last line for minutes
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
def fail_fast_requests(timeout_seconds: int = 5, retries: int = 0) -> Iterator[None]:
    """One quick try per MLflow HTTP call (or `retries` more) instead of the client's default (7 retries with
    backoff, minutes against a stopped server). In the loop a failed call costs nothing, since `RunLogger` keeps
    what it could not send and retries it within its deadline; at a run's start it fails the job in one line."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_seconds)}
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


UNSENT_FILE = "mlflow_unsent.json"  # beside a run's outputs: what could not be sent to its MLflow run


class RunLogger:
    """Logs to one MLflow run; metrics that fail to send (server down) are kept and re-sent later.

    Training must not stop because the tracking server restarts, and no point of the loss curve
    may be lost: failed batches wait in `pending` and go out, in order, with the next call. Every call
    makes one quick try per HTTP request (not MLflow's minutes of retries). After training, `start_deadline`
    bounds all calls together: what is still unsent when it passes (metrics, artifacts, tags, the status) is
    written to `unsent_file` by `save_unsent`, and `replay_unsent` sends it later (`python -m
    training.replay_mlflow OUTPUT_DIR`; a `--resume` does it first).
    """

    def __init__(self, run_id: str, retry_seconds: float = 0.0, retry_interval: float = 10.0,
                 unsent_file: str | os.PathLike | None = None):  # fmt: skip
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient()
        self.pending: list[Any] = []
        self.retry_seconds = retry_seconds
        self.retry_interval = retry_interval  # after a failure, metrics only queue up for this long
        self.logged_through = 0  # the last training step already in the run (a resumed job skips up to it)
        self.unsent_file = Path(unsent_file) if unsent_file else None
        self.unsent_artifacts: list[list] = []  # [local path, artifact path, is a folder]
        self.unsent_tags: dict[str, str] = {}
        self.unsent_status = ""
        self.deadline: float | None = None  # time.monotonic() by which every further call must be done
        self._next_attempt = 0.0

    def start_deadline(self, seconds: float) -> None:
        """From now on all calls together take at most `seconds` (tracking.deadline_seconds)."""
        self.deadline = time.monotonic() + seconds

    def _left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
        if time.monotonic() < self._next_attempt:
            return  # the server failed recently: keep training, send everything with a later call
        sent = self.flush()
        self._next_attempt = 0.0 if sent else time.monotonic() + self.retry_interval

    def flush(self, deadline_seconds: float | None = None) -> bool:
        """Send what is pending; True when nothing is left. Retries until `deadline_seconds` pass (never past
        the overall deadline)."""
        deadline = time.monotonic() + (deadline_seconds if deadline_seconds is not None else self.retry_seconds)
        if self.deadline is not None:
            deadline = min(deadline, self.deadline) if deadline_seconds is not None else self.deadline
        while self.pending:
            try:
                with fail_fast_requests():
                    while self.pending:  # MLflow's batch limit is 1000; drop each batch once sent, so none twice
                        self.client.log_batch(self.run_id, metrics=self.pending[:1000])
                        del self.pending[:1000]
            except Exception as error:
                if time.monotonic() >= deadline:
                    log.warning(
                        "MLflow unreachable (%s); %d metric values kept for later",
                        one_line_error(error)[:100],
                        len(self.pending),
                    )
                    return False
                time.sleep(1.0)
        return True

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self._retrying(lambda: self.client.log_artifacts(self.run_id, str(local_dir), artifact_path), 300):
            self.unsent_artifacts.append([str(Path(local_dir).resolve()), artifact_path, True])

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self._retrying(lambda: self.client.log_artifact(self.run_id, str(local_path), artifact_path), 300):
            self.unsent_artifacts.append([str(Path(local_path).resolve()), artifact_path, False])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        entities = [RunTag(k, str(v)) for k, v in tags.items()]
        if not self._retrying(lambda: self.client.log_batch(self.run_id, tags=entities)):
            self.unsent_tags.update({k: str(v) for k, v in tags.items()})

    def set_terminated(self, status: str) -> None:
        if self._retrying(lambda: self.client.set_terminated(self.run_id, status)):
            self.unsent_status = ""
        else:
            self.unsent_status = status

    def _retrying(self, action, timeout_seconds: int = 10, attempts: int = 3) -> bool:
        """True once `action` succeeded; False after `attempts` failures or when the deadline has passed."""
        error: Exception | None = None
        for attempt in range(attempts):
            left = self._left()
            if left is not None and left <= 0:
                break
            try:
                timeout = int(min(timeout_seconds, left)) + 1 if left is not None else timeout_seconds
                with fail_fast_requests(timeout):
                    action()
                return True
            except Exception as failure:
                error = failure
                if attempt < attempts - 1:
                    time.sleep(min(2.0 * (attempt + 1), max(self._left() or 2.0 * (attempt + 1), 0.0)))
        reason = one_line_error(error)[:200] if error else "the tracking deadline had passed"
        log.warning("MLflow call failed (%s)", reason)
        return False

    def unsent(self) -> str:
        """What is still unsent, in words ('' when nothing)."""
        parts = []
        if self.pending:
            steps = sorted({m.step for m in self.pending})
            parts.append(f"{len(self.pending)} metric values (steps {steps[0]}..{steps[-1]})")
        if self.unsent_artifacts:
            parts.append(f"{len(self.unsent_artifacts)} artifact upload(s)")
        if self.unsent_tags:
            parts.append(f"{len(self.unsent_tags)} tag(s)")
        if self.unsent_status:
            parts.append(f"the status {self.unsent_status}")
        return ", ".join(parts)

    def save_unsent(self) -> str:
        """Write what is unsent to `unsent_file` (atomically; merged with what an earlier job left there) and
        return a one-line warning naming it, or '' when everything was sent."""
        import json

        from core.files import write_text_atomic

        what = self.unsent()
        if not what or self.unsent_file is None:
            return f"MLflow run {self.run_id}: not sent: {what}" if what else ""
        earlier = json.loads(self.unsent_file.read_text()) if self.unsent_file.is_file() else {}
        record = {
            "run_id": self.run_id,
            "metrics": earlier.get("metrics", []) + [[m.key, m.value, m.timestamp, m.step] for m in self.pending],
            "artifacts": earlier.get("artifacts", []) + self.unsent_artifacts,
            "tags": {**earlier.get("tags", {}), **self.unsent_tags},
            "status": self.unsent_status or earlier.get("status", ""),
        }
        write_text_atomic(self.unsent_file, json.dumps(record))
        return (f"MLflow run {self.run_id}: not sent before the deadline: {what}; kept in {self.unsent_file}, "
                f"send it with: python -m training.replay_mlflow {self.unsent_file.parent}")  # fmt: skip


def replay_unsent(unsent_file: str | os.PathLike) -> str:
    """Send what `RunLogger.save_unsent` kept to its run, then remove the file; returns what was sent. Raises
    UserError naming the file when the server still fails (the file stays, nothing is sent twice)."""
    import json

    from mlflow.entities import Metric

    path = Path(unsent_file)
    record = json.loads(path.read_text())
    run = RunLogger(record["run_id"])
    run.start_deadline(120)
    run.pending = [Metric(key, value, timestamp, step) for key, value, timestamp, step in record["metrics"]]
    sent = run.flush()
    for local, artifact_path, is_folder in list(record["artifacts"]):
        (run.log_artifacts if is_folder else run.log_artifact)(local, artifact_path)
    if record["tags"]:
        run.set_tags(record["tags"])
    if record["status"]:
        run.set_terminated(record["status"])
    left = run.unsent()
    if not sent or left:
        run.unsent_file = path
        path.unlink()  # rewritten with only what is still unsent
        run.save_unsent()
        raise UserError(f"MLflow run {record['run_id']}: still not sent: {left}; kept in {path}")
    path.unlink()
    status = f", the status {record['status']}" if record["status"] else ""
    return (f"sent {len(record['metrics'])} metric values, {len(record['artifacts'])} artifact upload(s){status} "
            f"to MLflow run {record['run_id']}")  # fmt: skip
