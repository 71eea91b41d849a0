"""One sweep trial: train, generate, score with the single-run functions, and report to Tune.

A trial's folder (`<sweep>/trials/<key>`) and MLflow child run are named by its axis values and
seed, not by Ray's trial folder, so a retried trial, a resumed sweep or a trial restarted on another
node continues the same training folder and the same MLflow run instead of starting a duplicate.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from core.config import Config
from core.files import write_text_atomic
from tuning.spec import SAMPLE_INDEX, trial_key
from tuning.train_and_score import FAIL_ONCE_ENV, TrialContext, stage_end_step, train_and_score

__all__ = ["FAIL_ONCE_ENV", "KEY_TAG", "TrialContext", "run_trial"]

KEY_TAG = "sweep.trial_key"  # the MLflow tag that finds a trial's child run again
STATE_FILE = "trial_state.json"  # inside the Tune checkpoint: stages done and where the trial's files are


def trial_dir(context: TrialContext, params: dict[str, Any]) -> Path:
    return Path(context.sweep_dir) / "trials" / trial_key(params)


def run_trial(params: dict[str, Any], context: TrialContext) -> None:
    """The Tune trainable: `params` holds the axis values and `seed` of this trial."""
    import torch
    from ray import tune

    # `mlflow run` sets MLFLOW_RUN_ID for the driver; inherited here it would hijack the child run.
    os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ["MLFLOW_TRACKING_URI"] = context.tracking_uri
    torch.set_num_threads(max(1, int(context.spec.settings.cpus_per_trial)))

    spec, key = context.spec, trial_key(params)
    output_dir = trial_dir(context, params)
    # The trial folder's record wins over Tune's checkpoint: a sweep stopped between a trial's last
    # stage and Tune saving its state would otherwise train, generate and score it a second time.
    done, last_metrics = max(_stages_done(tune.get_checkpoint()), _recorded_stages(output_dir), key=lambda s: s[0])
    if done == spec.stages:  # finished, but the sweep stopped before Tune recorded it: report again, no rerun
        tune.report(last_metrics)
        return
    config = trial_config(context, params, output_dir)
    adopt_child_run(output_dir, config.tracking.experiment, context.parent_run_id, key)
    tags = {**{axis: str(params[axis]) for axis in spec.axes}, "seed": str(params["seed"]), KEY_TAG: key}
    if SAMPLE_INDEX in params:
        tags[f"sweep.{SAMPLE_INDEX}"] = str(params[SAMPLE_INDEX])
    tags.update({"sweep.name": spec.settings.name, "sweep.axes": json.dumps(spec.axes)})
    for stage in range(done, spec.stages):
        resume = "latest" if (output_dir / "config.yaml").is_file() else None
        if spec.workers > 1:
            from tuning.distributed import train_and_score_distributed

            metrics, run_id = train_and_score_distributed(context, config, resume, tags, stage)
        else:
            metrics, run_id = train_and_score(context, config, resume, tags, stage)
        _tag_node(run_id)
        metrics = {**metrics, "stage": stage + 1, "train_steps": stage_end_step(config, spec.stages, stage)}
        state = {"stages_done": stage + 1, "metrics": metrics, "output_dir": str(output_dir), "key": key}
        write_text_atomic(output_dir / STATE_FILE, json.dumps(state))
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / STATE_FILE).write_text(json.dumps(state))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _tag_node(run_id: str) -> None:
    """Which Ray node ran the trial: where to look for its logs, and how placement is checked."""
    import mlflow
    import ray

    if run_id:
        mlflow.tracking.MlflowClient().set_tag(run_id, "ray.node_id", ray.get_runtime_context().get_node_id())


def trial_config(context: TrialContext, params: dict[str, Any], output_dir: Path) -> Config:
    spec = context.spec
    config = spec.trial_config(params)
    config.output_dir = str(output_dir)
    config.tracking.tracking_uri = context.tracking_uri
    config.tracking.run_name = f"{spec.settings.name}/{output_dir.name}"
    return config


def _stages_done(checkpoint) -> tuple[int, dict]:
    """Stages finished according to the trial's Tune checkpoint, and the metrics reported with the last."""
    if checkpoint is None:
        return 0, {}
    with checkpoint.as_directory() as folder:
        return _recorded_stages(Path(folder))


def _recorded_stages(folder: Path) -> tuple[int, dict]:
    """Stages finished according to the state file in `folder` (a trial folder or a Tune checkpoint)."""
    record = folder / STATE_FILE
    if not record.is_file():
        return 0, {}
    state = json.loads(record.read_text())
    return state["stages_done"], state.get("metrics", {})


def adopt_child_run(output_dir: Path, experiment: str, parent_run_id: str, key: str) -> str:
    """Reuse this trial's MLflow child run if one exists; returns its id ('' when none yet).

    Training continues the run named in `output_dir/run.json`; when that file is gone (the trial
    restarted on a node without the folder), the run is found again by its key tag under the parent.
    """
    import mlflow

    record = output_dir / "run.json"
    if record.is_file():
        return json.loads(record.read_text())["mlflow_run_id"]
    client = mlflow.tracking.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return ""
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{KEY_TAG}` = '{key}' AND tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=1,
    )
    if not runs:
        return ""
    write_text_atomic(record, json.dumps({"mlflow_run_id": runs[0].info.run_id}))
    return runs[0].info.run_id
