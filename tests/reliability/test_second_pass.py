"""Issue 18's faults: a resume that does not fit, the last steps, a full disk at the end, concurrent generations,
a hostile model folder or manifest, steps replayed after a crash."""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from core.errors import UserError
from tests.conftest import REPO
from tests.reliability.conftest import error_lines, run_training, subprocess_env, train_argv
from training.checkpoints import complete_checkpoints
from training.train import train

TOKEN = "t0ken-9d1e-secret"


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def limit_file_size(limit: int):
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as a full disk fails with ENOSPC.
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_checkpoint_that_does_not_fit_stops_the_resume_and_pruning_spares_what_it_did_not_write(tiny_config):
    config = tiny_config("train.max_steps=4", "train.checkpoint_every=2", "train.checkpoints_keep=3")
    first = train(config, show_progress=False)
    output = first.output_dir
    before = digests(output / "checkpoints"), digests(output / "model")

    # config.yaml edited by hand (or a code change): the checkpoints no longer fit the model it describes.
    wider = tiny_config("train.max_steps=6", "train.checkpoint_every=2", "model.layers_per_block=2",
                        output_dir=output)  # fmt: skip
    saved = (output / "config.yaml").read_text()
    (output / "config.yaml").write_text(saved.replace("layers_per_block: 1", "layers_per_block: 2"))
    assert "layers_per_block: 2" in (output / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"checkpoint .*step_000004 does not fit the model being resumed"):
        train(wider, resume="latest", show_progress=False)
    assert (digests(output / "checkpoints"), digests(output / "model")) == before  # nothing trained over it

    # Resumed as it was (keep=1 now): this job prunes its own checkpoints only, never the first job's.
    (output / "config.yaml").write_text(saved)
    longer = tiny_config("train.max_steps=8", "train.checkpoint_every=2", "train.checkpoints_keep=1",
                         output_dir=output)  # fmt: skip
    rest = train(longer, resume="latest", show_progress=False)
    assert rest.step == 8
    assert [p.name for p in complete_checkpoints(output)] == ["step_000002", "step_000004", "step_000008"]


def test_steps_replayed_after_a_crash_are_logged_once(tiny_config):
    config = tiny_config("train.max_steps=9", "train.checkpoint_every=5", "train.log_every=1")
    first = train(config, show_progress=False, stop_after_steps=7)
    # A crash after step 7 was logged, before its checkpoint: the resume replays steps 6 and 7.
    shutil.rmtree(first.output_dir / "checkpoints" / "step_000007")
    rest = train(config, resume="latest", show_progress=False)
    history = MlflowClient(config.tracking.tracking_uri).get_metric_history(rest.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 10))  # each step once
    assert {m.step: m.value for m in history}[7] == pytest.approx(rest.losses[7])  # the replay is the same step


@pytest.mark.slow
def test_a_full_disk_during_the_final_model_save_is_one_line_and_keeps_the_model(
    tmp_path, train_overrides, mlflow_server
):
    # The store is a server's (its own process): the write limit below applies to the training process only.
    output, uri = tmp_path / "run", mlflow_server.uri
    overrides = train_overrides(output, uri, "train.max_steps=4", "train.checkpoint_every=4")
    assert run_training(train_argv(overrides)).returncode == 0
    model = digests(output / "model")
    # Resuming the finished run goes straight to saving the model: let no file grow past 64 KB.
    result = run_training(train_argv(overrides, resume=True), preexec_fn=limit_file_size(65536))
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert f"cannot write the model to {output / 'model'} (File too large)" in line and "Traceback" not in result.stderr
    assert digests(output / "model") == model and not list(output.glob(".model*"))  # nothing half-written
    run_id = json.loads((output / "run.json").read_text())["mlflow_run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
    assert "Traceback" not in result.stderr


def generate_argv(model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.generate", "--model", str(model), "--out", str(out), "--steps", "2",
            "--griffin-lim-iters", "2", *extra]  # fmt: skip


def test_a_full_disk_during_generation_leaves_no_clip_behind(trained_tiny_model, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        generate_argv(trained_tiny_model, out, "--per-class", "1", "--classes", "0,1,2"), cwd=REPO,
        env=subprocess_env(), capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size(100_000),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert f"cannot write the clips to {out}: File too large" in line and "Traceback" not in result.stderr
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_a_generation_into_a_folder_another_generation_holds_is_refused(trained_tiny_model, tmp_path):
    from core.files import lock_folder
    from core.generation import GENERATION_LOCK

    out = tmp_path / "out"
    held = lock_folder(out, GENERATION_LOCK, "another generation")  # as a running generation holds it
    try:
        argv = generate_argv(trained_tiny_model, out, "--per-class", "1", "--classes", "0")
        result = subprocess.run(argv, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    finally:
        held.close()
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert f"{out} is in use by another generation" in line
    assert not list(out.rglob("*.wav")) and not (out / "manifest.csv").exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"categories": ["../../x/PWNED"] + [f"c{i}" for i in range(49)]}, "categories[0]"),
        ({"categories": ["/tmp/PWNED"] + [f"c{i}" for i in range(49)]}, "categories[0]"),
        ({"categories": None}, "'categories' is missing"),
        ({"categories": ["dog"]}, "1 classes but the UNet has"),
        ({"mel": {"resolution": 2**20}}, "'mel.resolution' is 1048576, outside"),
        ({"mel": {"clip_seconds": 1e7}}, "'mel.clip_seconds' is 10000000.0, outside"),
        ({"mel": {"colour": "red"}}, "'mel.colour' is not a mel setting"),
        ({"normalize": None}, "'normalize' is missing"),
    ],
)
def test_a_hostile_model_folder_is_refused_before_anything_is_written(trained_tiny_model, tmp_path, change, named):
    from core.generation import GenerationRequest, generate

    model = tmp_path / "model"
    shutil.copytree(trained_tiny_model / "model", model)
    manifest = json.loads((model / "audio.json").read_text())
    for key, value in change.items():
        manifest[key] = {**manifest["mel"], **value} if key == "mel" else value
    (model / "audio.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=named.replace("[", r"\[").replace("(", r"\(")):
        generate(GenerationRequest(model=str(model), out=str(tmp_path / "out"), per_class=1), show_progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


def test_a_manifest_may_list_only_files_inside_its_folder(tmp_path):
    from evaluation.clips import read_manifest

    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "manifest.csv").write_text("file,target,category\n/etc/passwd,0,dog\n")
    with pytest.raises(UserError, match="/etc/passwd is not inside"):
        read_manifest(tmp_path / "gen")
    (tmp_path / "real.wav").write_bytes(b"RIFF")
    (tmp_path / "gen" / "manifest.csv").write_text("file,target,category\n../real.wav,0,dog\n")
    with pytest.raises(UserError, match=r"\.\./real\.wav is not inside"):
        read_manifest(tmp_path / "gen")


def test_bad_rows_and_odd_files_are_named_for_what_they_are(tmp_path, esc50_mini):
    import os

    import pandas as pd

    from core.audio import BadAudioError, decode_audio
    from core.esc50 import DataProblems, read_clips

    source = tmp_path / "collection"
    (source / "meta").mkdir(parents=True)
    (source / "audio").mkdir()
    table = pd.read_csv(esc50_mini / "meta" / "esc50.csv").head(8)
    for name in table["filename"]:
        shutil.copy(esc50_mini / "audio" / name, source / "audio" / name)
    text = table.to_csv(index=False).splitlines()
    rows = [line.split(",") for line in text[1:]]
    rows[0][0] = ""  # an empty filename cell
    rows[1][2] = "99999999999999999999"  # a target beyond any int
    rows[2][1], rows[3][1] = "0", "6"  # folds ESC-50 does not have
    (source / "meta" / "esc50.csv").write_text("\n".join([text[0], *(",".join(r) for r in rows)]) + "\n")
    with pytest.raises(DataProblems) as found:
        read_clips(str(source))
    said = str(found.value)
    assert "line 2: column 'filename' is empty" in said
    assert "line 3: column 'target' is not an integer" in said and "99999999999999999999" in said
    assert "-9223372036854775808" not in said
    assert "line 4: fold 0 of" in said and "line 5: fold 6 of" in said and "folds 1..5" in said

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "folder.wav").mkdir()
    os.mkfifo(odd / "fifo.wav")
    os.symlink(odd / "loop.wav", odd / "loop.wav")
    for name, what in (("folder.wav", "is a directory"), ("fifo.wav", "is a FIFO"), ("loop.wav", "symlink loop")):
        with pytest.raises(BadAudioError, match=what):
            decode_audio(odd / name, 22050, 5.0)


def test_a_read_only_tracking_store_stops_before_the_data_is_read(tmp_path, train_overrides):
    output, database = tmp_path / "run", tmp_path / "store" / "mlflow.db"
    database.parent.mkdir()
    MlflowClient(f"sqlite:///{database}").create_experiment("esc50-tiny", artifact_location=str(tmp_path / "a"))
    made = subprocess.run(["chattr", "+i", str(database)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {made.stderr.strip()}")
    try:
        result = run_training(train_argv(train_overrides(output, f"sqlite:///{database}", "train.max_steps=2")))
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=True)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert f"MLflow store sqlite:///{database} is not writable" in line and "Traceback" not in result.stderr
    assert not output.exists()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


@pytest.mark.slow
def test_sigterm_to_the_launcher_alone_stops_its_child_and_sigint_is_one_line(tmp_path, train_overrides):
    import signal

    from tests.reliability.conftest import start_training, wait_for

    output, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = train_overrides(output, uri, "train.max_steps=100000", "train.checkpoint_every=100000")
    accelerate = str(Path(sys.executable).parent / "accelerate")
    argv = [accelerate, "launch", "--config_file", "accelerate_config.yaml", "--cpu", *train_argv(overrides)[1:]]
    launcher = start_training(argv, tmp_path / "launcher.log")
    client = MlflowClient(uri)

    def losses_logged() -> bool:  # the loop runs (every step is logged: FAST has train.log_every=1)
        if not (output / "run.json").exists():
            return False
        run_id = json.loads((output / "run.json").read_text())["mlflow_run_id"]
        return len(client.get_metric_history(run_id, "train/loss")) >= 2

    wait_for(losses_logged, 240, "the training loop")
    (child,) = _children(launcher.pid)
    launcher.send_signal(signal.SIGTERM)  # what docker stop sends, to the launcher only
    launcher.wait(60)
    wait_for(lambda: not _alive(child), 90, "the orphaned training process to stop")
    (first,) = complete_checkpoints(output)  # it stopped after a step, with a checkpoint
    run_id = json.loads((output / "run.json").read_text())["mlflow_run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"

    resumed = start_training(train_argv(overrides, resume=True), tmp_path / "resumed.log")
    logged = len(client.get_metric_history(run_id, "train/loss"))
    wait_for(lambda: len(client.get_metric_history(run_id, "train/loss")) >= logged + 2, 240, "the resumed loop")
    resumed.send_signal(signal.SIGINT)  # Ctrl-C
    assert resumed.wait(90) == 130
    log = (tmp_path / "resumed.log").read_text()
    assert "SIGINT: stopping after this step with a checkpoint" in log and "Traceback" not in log
    assert "stopped early at step" in log and "(SIGINT); continue with:" in log
    assert complete_checkpoints(output)[-1].name > first.name
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"


class FailingProxy:
    """A local HTTP proxy in front of a real `mlflow server`; `mode` "pass", "500" (the API answers 500, /health
    still 200), "stall" (the API never answers) or "create500" (only creating a run answers 500)."""

    def __init__(self, target: str):
        import http.server
        import socketserver
        import threading

        import requests

        proxy = self
        self.mode, self.target = "pass", target

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                refused = proxy.mode in ("500", "stall") or (proxy.mode == "create500" and "/runs/create" in self.path)
                if self.path.startswith(("/api/", "/ajax-api/")) and refused:
                    if proxy.mode == "stall":
                        time.sleep(60)
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.request(self.command, proxy.target + self.path, data=body, headers=headers,
                                          timeout=60)  # fmt: skip
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.slow
def test_a_tracking_server_failing_mid_run_bounds_the_end_and_keeps_what_was_not_sent(
    tmp_path, train_overrides, tiny_config, mlflow_server
):
    from core.tracking import configure_tracking

    proxy = FailingProxy(mlflow_server.uri)
    try:
        for mode in ("500", "stall"):  # the start check makes a real API call, briefly
            proxy.mode = mode
            began = time.monotonic()
            with pytest.raises(UserError, match="is not reachable"):
                configure_tracking(proxy.uri, "esc50-tiny")
            assert time.monotonic() - began < 30, mode

        # A server that passes the check but refuses to create the run, behind a token-only URI: one line,
        # quickly (MLflow alone retries for minutes, then prints the URL), and the folder is free for a rerun.
        proxy.mode = "create500"
        refused = tmp_path / "refused"
        began = time.monotonic()
        with pytest.raises(UserError, match="could not start the run") as error:
            train(tiny_config(f"tracking.tracking_uri=http://{TOKEN}@{proxy.uri.removeprefix('http://')}",
                              output_dir=refused), show_progress=False)  # fmt: skip
        assert time.monotonic() - began < 120
        assert TOKEN not in str(error.value) and "***@127.0.0.1" in str(error.value)
        assert not (refused / "config.yaml").exists()
        proxy.mode = "pass"

        output = tmp_path / "run"
        overrides = train_overrides(output, proxy.uri, "train.max_steps=24", "train.checkpoint_every=4",
                                    "tracking.deadline_seconds=10")  # fmt: skip
        process = subprocess.Popen(train_argv(overrides), cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        from tests.reliability.conftest import wait_for

        wait_for(lambda: (output / "checkpoints" / "step_000004").is_dir(), 240, "step 4")
        proxy.mode = "500"  # from here on the API fails
        began = time.monotonic()
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        assert time.monotonic() - began < 90  # bounded: training's remaining steps and the 10-s deadline
        warnings = [line for line in stderr.splitlines() if "not sent before the deadline" in line]
        assert len(warnings) == 1 and "mlflow_unsent.json" in warnings[0] and "the status FINISHED" in warnings[0]
        run_id = json.loads((output / "run.json").read_text())["mlflow_run_id"]

        proxy.mode = "pass"  # the server is back: the kept metrics, artifacts and status go to the run
        replayed = subprocess.run(
            [sys.executable, "-m", "training.replay_mlflow", str(output), "--tracking-uri", proxy.uri], cwd=REPO,
            env=subprocess_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stderr[-3000:]
        assert not (output / "mlflow_unsent.json").exists()
        client = MlflowClient(mlflow_server.uri)
        assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 25))
        assert client.get_run(run_id).info.status == "FINISHED"
        assert {f.path for f in client.list_artifacts(run_id)} >= {"model", "samples"}
    finally:
        proxy.close()


def test_runs_started_at_once_all_log_their_shared_training_clips(tmp_path):
    """A sweep's trials start together and log the same clips as their input: MLflow's SQL store creates the
    data set on first use, and the racing runs hit its unique key (the CPU study's first two trials did)."""
    import threading

    from core.config import load_config
    from tests.conftest import TINY_CONFIG
    from training.train import log_training_data_once

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("race", artifact_location=(tmp_path / "artifacts").as_uri())
    config = load_config(TINY_CONFIG, [f"output_dir={tmp_path / 'run'}"])
    failures = []
    for attempt in range(4):  # a few rounds: the race is lost most rounds, not every one
        record = {"filenames": ["1-1-A-0.wav", "1-2-A-0.wav"], "digest": f"digest-{attempt}", "source": "/data"}
        runs = [client.create_run(experiment).info.run_id for _ in range(4)]
        together = threading.Barrier(len(runs))

        def log(run_id: str, together: threading.Barrier = together, record: dict = record) -> None:
            together.wait()
            try:
                log_training_data_once(client, run_id, config, record)
            except Exception as error:
                failures.append(error)

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(len(client.get_run(run_id).inputs.dataset_inputs) == 1 for run_id in runs), attempt
    assert failures == []
