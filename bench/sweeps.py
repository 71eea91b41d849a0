"""Stage 5: tiny training trials through Ray Tune.

The trials are the study's ablation grid on the tiny model: L2/L1 loss x attention on/off x
normalization on/off, 3 seeds each (24 trials; 2 with --quick), each `training.train.train` on
configs/tiny.yaml at 32x32 with its own output folder and its own MLflow SQLite store (copied from
a template made beforehand, so no trial waits on another's database lock or creates tables).

sweep_overhead: the trials through Ray Tune one at a time (each given every CPU) vs the same trials
called one after another in this process: what Ray's worker start, imports and reporting cost.
sweep_scaling: the same trials with 1 CPU each (torch threads set from the trial's allocation),
2 at a time vs 1 at a time. Ray is started by `tuning.cluster.connect`, as a sweep starts it (local,
127.0.0.1 only, no dashboard), and Tune reuses actors, as tuning/sweep.py has it.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import sys
import time
from pathlib import Path

from bench.common import BenchOptions, StageResult, log, median_result

STEPS = 30  # per trial: a tiny trial takes about 3 s on 2 CPU cores


def study_trials(quick: bool) -> list[list[str]]:
    """Overrides of each trial: the study's 2 x 2 x 2 grid, 3 seeds (the first 2 trials with `quick`)."""
    grid = itertools.product(("l2", "l1"), ("true", "false"), ("true", "false"), (0, 1, 2))
    trials = [
        [f"train.loss={loss}", f"model.attention={attention}", f"data.normalize={normalize}", f"seed={seed}"]
        for loss, attention, normalize, seed in grid
    ]
    return trials[:2] if quick else trials


def train_tiny(params: dict) -> float:
    """One trial: train the tiny config with the trial's overrides; returns its last logged loss."""
    import torch

    from bench.train import bench_config
    from training.train import train

    torch.set_num_threads(params["threads"])
    folder = Path(params["root"]) / f"trial-{params['index']}"
    folder.mkdir(parents=True)
    shutil.copy(params["mlflow_template"], folder / "mlflow.db")
    config = bench_config(
        params["source"], str(folder), resolution=32, steps=params["steps"], log_every=params["steps"],
        extra=[f"data.cache_dir={params['cache_dir']}", *params["overrides"]],
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
    )  # fmt: skip
    result = train(config, show_progress=False)
    return result.losses[max(result.losses)]


def ray_trial(config: dict) -> None:
    """The Tune trainable (`config["trial"]` is one grid point): torch threads = the CPUs Ray gave this trial."""
    import ray
    from ray import tune

    params = config["trial"]
    cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    tune.report({"loss": train_tiny({**params, "threads": max(1, cpus)})})


def run_through_tune(trials: list[dict], cpus: int, concurrent: int, storage: Path) -> float:
    """Seconds for Tune to run `trials` (`cpus` each, `concurrent` at a time); Ray is already up."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(ray_trial, {"cpu": cpus}),
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(storage), name="bench", verbose=0),
    )
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Tune's experiment boxes: stdout keeps the bench's table
        results = tuner.fit()
    seconds = time.perf_counter() - started
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} bench trial(s) failed under Ray Tune: {errors[0]}")
    return seconds


def run(options: BenchOptions, stage: str) -> list[StageResult]:
    import os

    from core.config import DataConfig
    from core.spectrograms import build_spectrogram_cache
    from tuning.cluster import connect

    root = options.work_dir / stage
    root.mkdir(parents=True, exist_ok=True)
    cache_dir = str(options.work_dir / "spectrogram-cache")
    build_spectrogram_cache(DataConfig(source=options.source, resolution=32, cache_dir=cache_dir), show_progress=False)
    template = make_mlflow_template(root / "template.db")
    overrides, steps = study_trials(options.quick), 2 if options.quick else STEPS
    count, cpus = len(overrides), os.cpu_count() or 2

    def trials(tag: str, threads: int) -> list[dict]:
        folder = root / f"{tag}-{time.monotonic_ns()}"
        return [
            {"index": i, "root": str(folder), "source": options.source, "cache_dir": cache_dir, "steps": steps,
             "mlflow_template": str(template), "threads": threads, "overrides": trial}
            for i, trial in enumerate(overrides)
        ]  # fmt: skip

    started_ray = connect(None, cpus)
    try:
        ours_runs, base_runs = [], []
        for repeat in range(options.repeats):
            if stage == "sweep_overhead":
                started = time.perf_counter()
                for params in trials("in-process", cpus):
                    train_tiny(params)
                base_runs.append(count / (time.perf_counter() - started))
                ours_runs.append(count / run_through_tune(trials("tune", cpus), cpus, 1, root / "ray"))
            else:
                base_runs.append(count / run_through_tune(trials("one", 1), 1, 1, root / "ray"))
                ours_runs.append(count / run_through_tune(trials("two", 1), 1, 2, root / "ray"))
            log(f"  {stage} {repeat + 1}/{options.repeats}: {ours_runs[-1]:.3f} vs {base_runs[-1]:.3f} trials/s")
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    details = {"trials": count, "steps_per_trial": steps, "resolution": 32}
    if stage == "sweep_overhead":
        name = "the same trials in-process, one after another"
        details.update(cpus_per_trial=cpus, concurrent=1)
    else:
        name = "Ray Tune, 1 CPU per trial, 1 at a time"
        details.update(cpus_per_trial=1, concurrent=2)
    return [median_result(stage, "trials/s", name, ours_runs, base_runs, **details)]


def make_mlflow_template(path: Path) -> Path:
    """An MLflow SQLite store with its tables and the tiny config's experiment, copied for each trial."""
    import mlflow

    from core.tracking import configure_tracking

    if not path.exists():
        previous = mlflow.get_tracking_uri()
        configure_tracking(f"sqlite:///{path}", "esc50-tiny")
        mlflow.set_tracking_uri(previous)
    return path
