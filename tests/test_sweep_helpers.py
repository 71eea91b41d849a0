"""Shared by the sweep tests: the tiny sweep pointed at test folders, and its child runs."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABLATION_TINY = REPO / "configs" / "ablation_tiny.yaml"
RECIPE_TINY = REPO / "configs" / "recipe_tiny.yaml"
STUDY_CPU = REPO / "configs" / "study_cpu.yaml"


def tiny_overrides(tmp_path: Path, name: str, tracking_uri: str, esc50_mini: Path, cache: Path) -> list[str]:
    return [
        f"sweep.name={name}",
        f"sweep.storage_path={tmp_path / 'sweeps'}",
        f"sweep.evaluate.cache_dir={cache.parent / 'evaluation-cache'}",  # one scorer for every test
        f"data.source={esc50_mini}",
        f"data.cache_dir={cache}",
        f"tracking.tracking_uri={tracking_uri}",
        "sweep.generate.classes=[0,1,2,3,4,5,6,7,8,9]",  # 10 classes x 1 clip: seconds, not minutes
    ]


def tiny_sweep(
    tmp_path: Path,
    name: str,
    tracking_uri: str,
    esc50_mini: Path,
    cache: Path,
    *overrides: str,
    file: Path = ABLATION_TINY,
):
    from tuning.spec import load_sweep

    return load_sweep(file, tiny_overrides(tmp_path, name, tracking_uri, esc50_mini, cache) + list(overrides))


def child_runs(spec, parent_run_id: str) -> list:
    import mlflow

    client = mlflow.tracking.MlflowClient()
    experiment = client.get_experiment_by_name(spec.base["tracking"]["experiment"])
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=1000
    )
