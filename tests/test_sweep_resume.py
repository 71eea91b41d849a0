"""A sweep interrupted midway (Ctrl-C to the driver) and resumed runs only the trials that had not finished.

The sweep runs as the real command, with its own local Ray and its own MLflow server over a SQLite
store (the path users take when the tracking URI is not http).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_sweep_helpers import ABLATION_TINY, REPO, child_runs, tiny_overrides
from tuning.spec import load_sweep
from tuning.trial import KEY_TAG

pytestmark = pytest.mark.slow


def finished_trials(sweep_dir: Path) -> dict[str, int]:
    """Trial folder -> modification time of its scores: a trial that ran again would have a newer one."""
    return {p.parents[1].name: p.stat().st_mtime_ns for p in sweep_dir.glob("trials/*/evaluation/metrics.json")}


def checkpointed_trials(sweep_dir: Path) -> set[str]:
    """Trials whose final report reached Tune (their checkpoint holds the trial state)."""
    return {p.parents[1].name for p in sweep_dir.glob("tune/*/checkpoint_*/trial_state.json")}


def test_interrupted_sweep_resumes_only_the_missing_trials(tmp_path: Path, esc50_mini: Path, spectrogram_cache_dir):
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = tiny_overrides(tmp_path, "resume", store, esc50_mini, spectrogram_cache_dir)
    # 2 x 1 x 1 = 2 trials, one at a time: Ctrl-C after the first leaves the second unfinished
    overrides += ["sweep.grid.model.attention=[false]", "sweep.grid.data.normalize=[true]"]
    overrides += ["sweep.max_concurrent_trials=1"]
    command = [sys.executable, "-m", "tuning.sweep", "--config", str(ABLATION_TINY), "--num-cpus", "2", *overrides]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    environment.pop("MLFLOW_TRACKING_URI", None)
    sweep_dir = tmp_path / "sweeps" / "resume"

    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 400
        while not checkpointed_trials(sweep_dir) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        first.send_signal(signal.SIGINT)  # what Ctrl-C does
        first.wait(180)
    checkpointed = checkpointed_trials(sweep_dir)
    before = {name: mtime for name, mtime in finished_trials(sweep_dir).items() if name in checkpointed}
    assert first.returncode != 0 and len(before) == 1, (tmp_path / "first.log").read_text()[-3000:]

    resumed = subprocess.run(
        [*command, "--resume"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=500
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = finished_trials(sweep_dir)
    assert len(after) == 2
    assert {name: after[name] for name in before} == before  # finished trials were not run again

    mlflow.set_tracking_uri(store)  # the sweep's own server is gone; its store remains
    spec = load_sweep(ABLATION_TINY, overrides)
    parent_run_id = json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"]
    keys = [run.data.tags[KEY_TAG] for run in child_runs(spec, parent_run_id)]
    assert sorted(keys) == sorted(after)  # one child run per trial, none duplicated by the interruption
    assert mlflow.get_run(parent_run_id).info.status == "FINISHED"
    assert (sweep_dir / "report" / "report.md").is_file()
    # It ends with where the results are: the report, the parent run, a UI line that works from any folder.
    assert f"report: {(sweep_dir / 'report' / 'report.md').resolve()}" in resumed.stdout
    assert f"MLflow parent run: {parent_run_id}" in resumed.stdout
    assert f"-m mlflow ui --backend-store-uri {store}" in resumed.stdout
