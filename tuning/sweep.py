"""Run an ablation grid on Ray Tune: every trial trains, generates and scores; MLflow holds it all.

    python -m tuning.sweep --config configs/ablation.yaml [--address auto] [--resume] [key=value ...]

One parent MLflow run per sweep, one nested child run per trial, the results table at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.config import split_overrides
from core.errors import UserError, exit_on_user_error
from core.esc50 import is_local_source
from core.files import write_text_atomic
from core.secrets import redact_uri
from core.tracking import check_launcher_run, configure_tracking
from tuning.spec import SAMPLE_INDEX, VARIANT, SweepSpec, load_sweep, trial_key
from tuning.trial import FAIL_ONCE_ENV, TrialContext, run_trial

RECORD = "sweep.json"  # <sweep_dir>/sweep.json: the parent run id, kept for --resume


@dataclass
class SweepOutcome:
    sweep_dir: Path
    parent_run_id: str
    tracking_uri: str  # the store the runs went to (a sweep-local server's store, not its address)
    total: int
    finished: int  # trained all stages, scored
    errored: list[str]
    report_dir: Path | None
    stopped_early: int = 0  # ASHA stopped them after a stage: a result, not a failure

    @property
    def complete(self) -> bool:
        return self.finished + self.stopped_early == self.total and not self.errored


def run_sweep(
    spec: SweepSpec, address: str | None = None, resume: bool = False, num_cpus: int | None = None
) -> SweepOutcome:
    """Run (or with `resume`, continue) the sweep; the function behind the CLI, also used by tests."""
    from tuning.cluster import check_resources, connect
    from tuning.tracking_server import absolute_store_uri, tracking_server

    settings = spec.settings
    check_launcher_run(spec.base["tracking"]["tracking_uri"])
    launcher_run_id = os.environ.pop("MLFLOW_RUN_ID", "")  # `mlflow run . -e sweep` made the parent for us
    sweep_dir = Path(settings.storage_path).expanduser().resolve() / settings.name
    record = sweep_dir / RECORD
    if resume and not record.is_file():
        raise UserError(f"nothing to resume: no sweep '{settings.name}' in {sweep_dir.parent} ({RECORD} missing)")
    if not resume and record.is_file():
        raise UserError(
            f"sweep '{settings.name}' already exists in {sweep_dir.parent}; "
            "pass --resume to continue it, or choose another sweep.name"
        )
    pin_paths(spec)
    check_protocol(spec)  # a reference too small, or options the evaluation rejects: before Ray or any trial
    import mlflow

    store = absolute_store_uri(spec.base["tracking"]["tracking_uri"] or mlflow.get_tracking_uri())
    started_ray = connect(address, num_cpus)
    try:  # resources first: a sweep that cannot run leaves no parent run and no sweep record behind
        fitting = check_resources(settings.cpus_per_trial, settings.gpus_per_trial, spec.workers)
        warm_spectrogram_caches(spec)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with tracking_server(store, sweep_dir / "mlflow-server.log") as uri:
            configure_tracking(uri, spec.base["tracking"]["experiment"])
            parent_run_id = open_parent_run(spec, sweep_dir, launcher_run_id)
            log_ceiling(spec, parent_run_id)
            context = TrialContext(spec, str(sweep_dir), uri, parent_run_id, os.environ.get(FAIL_ONCE_ENV, ""))
            grid = build_tuner(spec, context, resume, fitting).fit()
            outcome = summarize(spec, grid, sweep_dir, parent_run_id, store)
            outcome.report_dir = finish_parent_run(spec, outcome)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return outcome


def pin_paths(spec: SweepSpec) -> None:
    """Trials run in their own folders: every relative path is made absolute before Tune starts."""
    data = spec.base["data"]
    if is_local_source(data["source"]):
        data["source"] = str(Path(data["source"]).expanduser().resolve())
    data["cache_dir"] = str(Path(data["cache_dir"]).expanduser().resolve())
    evaluate = spec.settings.evaluate
    if evaluate.reference and is_local_source(evaluate.reference):
        evaluate.reference = str(Path(evaluate.reference).expanduser().resolve())
    evaluate.cache_dir = str(Path(evaluate.cache_dir or ".cache/evaluation").expanduser().resolve())


def param_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {key: tune.grid_search(list(values)) for key, values in spec.grid.items()}
    if spec.variants:
        space[VARIANT] = tune.grid_search(list(spec.variants))
    if spec.space:
        # Each draw is one set of values run with every grid point and seed, so seeds stay repeats of
        # one configuration; Tune resolves each trial's values from its draw's index.
        drawn = draw_samples(spec)
        space[SAMPLE_INDEX] = tune.grid_search(list(range(len(drawn))))
        for key in spec.space:
            space[key] = tune.sample_from(lambda config, key=key: drawn[config[SAMPLE_INDEX]][key])
    space["seed"] = tune.grid_search(list(spec.settings.seeds))
    return space


def draw_samples(spec: SweepSpec) -> list[dict[str, Any]]:
    """`sweep.num_samples` draws from `sweep.space` with Tune's distributions, seeded by `sweep.sample_seed`."""
    import numpy as np
    from ray import tune

    random_state = np.random.default_rng(spec.settings.sample_seed)
    domains = {}
    for key, distribution in spec.space.items():
        ((name, arguments),) = distribution.items()
        domains[key] = tune.choice(list(arguments)) if name == "choice" else getattr(tune, name)(*arguments)
    return [
        {key: _plain(domain.sample(random_state=random_state)) for key, domain in domains.items()}
        for _ in range(spec.settings.num_samples)
    ]


def _plain(value: Any) -> Any:
    """NumPy scalars as Python values: they go into configs, tags and JSON."""
    return value.item() if hasattr(value, "item") else value


def build_tuner(spec: SweepSpec, context: TrialContext, resume: bool, fitting: int):
    from ray import tune

    settings = spec.settings
    if spec.workers > 1:  # the trial only drives Ray Train workers, which hold the CPUs and GPUs
        # A placement group needs one non-empty bundle; a byte of memory holds no CPU the workers need.
        resources = {"cpu": 0, "memory": 1}
        concurrent = settings.max_concurrent_trials or fitting
    else:
        resources = {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
        concurrent = settings.max_concurrent_trials or None
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), resources)
    tune_dir = Path(context.sweep_dir) / "tune"
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        # Finished trials stay finished; errored ones continue from their last checkpoint.
        return tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=True)
    scheduler = None
    if settings.search == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=spec.stages, grace_period=settings.asha.grace_period,
            reduction_factor=settings.asha.reduction_factor,
        )  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=settings.metric if scheduler else None, mode=settings.mode if scheduler else None,
            scheduler=scheduler, num_samples=1, max_concurrent_trials=concurrent, reuse_actors=True,
            trial_dirname_creator=lambda trial: tune_folder_name(spec, trial.config),
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=context.sweep_dir,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )  # fmt: skip


def tune_folder_name(spec: SweepSpec, config: dict[str, Any]) -> str:
    """Tune's folder for a trial. Values drawn from `sweep.space` are still placeholders here: the index names them."""
    return trial_key({key: value for key, value in config.items() if key not in spec.space})


def warm_spectrogram_caches(spec: SweepSpec) -> None:
    """Compute each distinct spectrogram cache once, here, instead of in several trials at once."""
    from core.spectrograms import build_spectrogram_cache

    seen = set()
    for params in spec.configurations():
        config = spec.trial_config({**params, "seed": spec.settings.seeds[0]})
        key = json.dumps(asdict(config.data), sort_keys=True, default=str)
        if key in seen or not is_local_source(config.data.source):
            continue
        seen.add(key)
        build_spectrogram_cache(config.data, show_progress=True)


def open_parent_run(spec: SweepSpec, sweep_dir: Path, launcher_run_id: str) -> str:
    """The sweep's parent run: the recorded one on --resume, the launcher's, or a new one."""
    import mlflow
    from mlflow.entities import Param, RunTag

    client = mlflow.tracking.MlflowClient()
    record = sweep_dir / RECORD
    if record.is_file():
        parent = json.loads(record.read_text())["parent_run_id"]
        client.update_run(parent, status="RUNNING")
        return parent
    experiment = mlflow.get_experiment_by_name(spec.base["tracking"]["experiment"])
    parent = launcher_run_id or client.create_run(experiment.experiment_id, run_name=spec.settings.name).info.run_id
    tags = {
        "sweep.name": spec.settings.name, "sweep.axes": json.dumps(spec.axes), "sweep.dir": str(sweep_dir),
        "sweep.trials": str(spec.trial_count()), "sweep.source": spec.source,
    }  # fmt: skip
    settings = OmegaConf.to_container(OmegaConf.structured(spec.settings))
    # What is recorded (params, sweep.yaml) carries no credentials of the tracking URI.
    base = {
        **spec.base,
        "tracking": {**spec.base["tracking"], "tracking_uri": redact_uri(spec.base["tracking"]["tracking_uri"])},
    }
    flat = {f"sweep.{k}": v for k, v in _flatten(settings).items()}
    flat.update({f"base.{k}": v for k, v in _flatten(base).items()})
    params = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(parent, params=params[start : start + 100])
    client.log_batch(parent, tags=[RunTag(k, v) for k, v in tags.items()])
    document = {"base": base, "sweep": settings}
    resolved = write_text_atomic(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.create(document)))
    client.log_artifact(parent, str(resolved))
    write_text_atomic(record, json.dumps({"parent_run_id": parent, "name": spec.settings.name}))
    return parent


def base_protocol(spec: SweepSpec) -> dict:
    """The evaluation options of the base config's protocol: the clips its models train on are kept out."""
    from core.config import DataConfig
    from core.spectrograms import training_clips

    data = DataConfig(**spec.base["data"])
    return {"trained_on": list(training_clips(data)["filename"]), "training_source": data.source,
            "skip_bad": data.skip_bad}  # fmt: skip


def check_protocol(spec: SweepSpec) -> None:
    """The base config's evaluation split and options, checked before any work (each trial builds its own)."""
    from evaluation.protocol import check_interval_sizes, split_reference
    from evaluation.scoring import EvalOptions

    evaluate = spec.settings.evaluate
    options = EvalOptions.from_options({**base_protocol(spec), **dict(evaluate.options)})
    split = split_reference(
        evaluate.reference or spec.base["data"]["source"], list(evaluate.reference_folds), options.hub_split,
        options.trained_on, options.allow_training_overlap, options.training_source, options.skip_bad,
    )  # fmt: skip
    check_interval_sizes(split, options.bootstrap)


def log_ceiling(spec: SweepSpec, parent_run_id: str) -> None:
    """Score the real held-out clips once, on the parent run as `real_*`: the report's ceiling row.

    Done here, before any trial, it also fits the offline scorer once into the shared evaluation
    cache, instead of in every trial that starts at the same time. Each trial scores the same clips again,
    with its own representation (`repr_*`): its configuration's ceilings, beside its own row.
    """
    import time

    import mlflow
    from mlflow.entities import Metric

    from evaluation.evaluate import score_real
    from evaluation.metrics import REAL_PREFIX, logged_name, plain_name

    evaluate = spec.settings.evaluate
    client = mlflow.tracking.MlflowClient()
    logged = client.get_run(parent_run_id).data.metrics
    if not evaluate.ceiling or any(plain_name(k).startswith(REAL_PREFIX) for k in logged):
        return
    data = spec.base["data"]
    metrics = score_real(
        evaluate.reference or data["source"], list(evaluate.metrics), reference_folds=tuple(evaluate.reference_folds),
        sample_rate=data["sample_rate"], cache_dir=evaluate.cache_dir,
        **{**base_protocol(spec), **dict(evaluate.options)},
    )  # fmt: skip
    now = int(time.time() * 1000)
    real = [Metric(logged_name(f"{REAL_PREFIX}{k}"), float(v), now, 0) for k, v in metrics.items()]
    client.log_batch(parent_run_id, metrics=real)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def summarize(spec: SweepSpec, grid, sweep_dir: Path, parent_run_id: str, store: str) -> SweepOutcome:
    finished, stopped_early, errored = 0, 0, []
    for result, status in zip(grid, _trial_statuses(grid)):
        name = trial_key(result.config or {})
        stage = (result.metrics or {}).get("stage", 0)
        if result.error is not None:
            errored.append(f"{name}: {str(result.error).splitlines()[0][:200]}")
        elif stage == spec.stages:
            finished += 1
        elif spec.stages > 1 and stage >= 1 and status == "TERMINATED":  # the scheduler stopped it at a rung
            stopped_early += 1
    return SweepOutcome(
        sweep_dir, parent_run_id, store, spec.trial_count(), finished, errored, None, stopped_early=stopped_early
    )


def _trial_statuses(grid) -> list[str]:
    """Tune's status of each result's trial (TERMINATED, PAUSED, ...), in result order.

    A trial ASHA stopped and one a Ctrl-C interrupted report alike; only the status tells them apart.
    ResultGrid builds its results from `_experiment_analysis.trials`, in that order. Where that is not
    available every status is '' and such trials count as unfinished (resumable), never as done.
    """
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None)
    if trials is None or len(trials) != len(grid):
        return [""] * len(grid)
    return [str(trial.status) for trial in trials]


def finish_parent_run(spec: SweepSpec, outcome: SweepOutcome) -> Path | None:
    """Write the results table into the sweep folder and the parent run; close the parent run."""
    import mlflow

    from evaluation.report import write_report

    client = mlflow.tracking.MlflowClient()
    report_dir = None
    if outcome.finished or outcome.stopped_early:
        report_dir = outcome.sweep_dir / "report"
        files = write_report(spec.base["tracking"]["experiment"], report_dir, parent_run_id=outcome.parent_run_id,
                             baseline=spec.settings.baseline)  # fmt: skip
        client.log_artifacts(outcome.parent_run_id, str(report_dir), "report")
        print(files.markdown.read_text())
    status = "FINISHED" if outcome.complete else ("FAILED" if outcome.errored else "KILLED")
    client.set_terminated(outcome.parent_run_id, status)
    return report_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tuning.sweep",
        description="Run the ablation grid on Ray Tune (one box or a Ray cluster), tracked in MLflow.",
        epilog="Example: python -m tuning.sweep --config configs/ablation_tiny.yaml sweep.seeds=[0,1]",
    )
    parser.add_argument("--config", required=True, help="sweep file (configs/ablation.yaml, ablation_tiny.yaml)")
    parser.add_argument("--address", help="join a running Ray cluster: 'auto' or HOST:PORT (default: start one here)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    parser.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all)")
    parser.add_argument("--cpus-per-trial", type=float, help="= sweep.cpus_per_trial")
    parser.add_argument("--gpus-per-trial", type=float, help="= sweep.gpus_per_trial (> 1: distributed training)")
    parser.add_argument("--storage-path", help="= sweep.storage_path: a folder all nodes share")
    parser.add_argument("overrides", nargs="*", help="dotted overrides: sweep.seeds=[0] train.max_steps=100 ...")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = split_overrides(args.overrides)  # as training splits them (`mlflow run -e sweep -P overrides=...`)
    for key in ("cpus_per_trial", "gpus_per_trial"):
        if getattr(args, key) is not None:
            overrides.append(f"sweep.{key}={getattr(args, key)}")
    if args.storage_path:
        overrides.append(f"sweep.storage_path={args.storage_path}")
    from core.tracking import where_to_look

    spec = load_sweep(args.config, overrides)
    outcome = run_sweep(spec, address=args.address, resume=args.resume, num_cpus=args.num_cpus)
    early = f" ({outcome.stopped_early} more stopped early by ASHA)" if outcome.stopped_early else ""
    print(f"sweep {spec.settings.name}: {outcome.finished}/{outcome.total} trials finished{early}; parent MLflow run "
          f"{outcome.parent_run_id}; files in {outcome.sweep_dir}")  # fmt: skip
    if outcome.report_dir is not None:
        print(f"report: {(outcome.report_dir / 'report.md').resolve()}")
    print(where_to_look(outcome.parent_run_id, "MLflow parent run", outcome.tracking_uri))
    if not outcome.complete:
        for line in outcome.errored:
            print(f"failed: {line}")
        print(f"continue with: python -m tuning.sweep --config {args.config} --resume (same overrides)")
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
