"""The metric registry: every table, the report and the sweep read it, so no metric is named anywhere else."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from core.errors import UserError
from evaluation import metrics as registry
from evaluation import report, table
from evaluation.metrics import REGISTRY, SCORER_TABLE, Metric, find_metric, lower_is_better


def test_every_metric_has_one_direction_and_prefixed_names_resolve_to_it():
    assert lower_is_better("fd_esc") and lower_is_better("fad_pann") and not lower_is_better("esc_top1")
    assert find_metric("real_ca_map10") is REGISTRY["ca_map10"] and find_metric("repr_fd_esc") is REGISTRY["fd_esc"]
    assert find_metric("fd_nothing") is None
    assert {m.mode for m in REGISTRY.values()} == {"min", "max"}


def test_fad_of_any_embedding_model_fills_the_fad_column_of_the_table_and_the_report():
    """A sweep scored with --fad-model pann used to lose its FAD column: only fad_vggish was named."""
    rows = {"generated": {"fad_pann": 7.5, "ca_top1": 0.2}}
    ((title, frame),) = table.tables(rows)
    assert title.endswith("FAD with pann") and frame.loc["generated", "Fad score"] == "7.500"
    runs = pd.DataFrame({"params.train.loss": ["l1", "l2"], "params.seed": ["0", "0"],
                         "metrics.fad_pann": [9.0, 7.0], "run_id": ["a", "b"]})  # fmt: skip
    summary = report.summarize(runs, ["train.loss"])
    assert list(summary["fad_pann_mean"]) == [9.0, 7.0]
    assert "fad_pann ↓" in report.to_markdown(summary)


def test_a_new_metric_is_declared_once_and_every_table_and_the_report_show_it(monkeypatch):
    new = Metric("esc_entropy", "ESC entropy", False, "esc", SCORER_TABLE, "ranking", "a new score")
    monkeypatch.setitem(REGISTRY, new.name, new)
    ((_, frame),) = table.tables({"generated": {"fd_esc": 1.0, "esc_entropy": 0.25}})
    assert frame.loc["generated", "ESC entropy"] == "0.250"
    runs = pd.DataFrame({"params.seed": ["0", "1"], "metrics.esc_entropy": [0.2, 0.4], "run_id": ["a", "b"]})
    summary = report.summarize(runs, [])
    assert math.isclose(summary["esc_entropy_mean"].iloc[0], 0.3)
    assert "esc_entropy ↑" in report.to_markdown(summary)
    assert "esc_entropy" in registry.summary_metrics()


def _sweep(*overrides: str):
    from tests.test_sweep_helpers import ABLATION_TINY
    from tuning.spec import load_sweep

    return load_sweep(ABLATION_TINY, list(overrides))


def test_the_sweep_mode_follows_the_metric_and_a_contradiction_is_refused():
    assert _sweep().settings.mode == "min"  # fd_esc: lower is better
    assert _sweep("sweep.metric=esc_top1").settings.mode == "max"
    with pytest.raises(UserError, match="'sweep.mode': esc_top1 is better when higher, so its mode is max, not min"):
        _sweep("sweep.metric=esc_top1", "sweep.mode=min")
    with pytest.raises(UserError, match="'sweep.metric': 'fd_typo' is not a metric evaluation logs"):
        _sweep("sweep.metric=fd_typo")
    with pytest.raises(UserError, match="fad_vggish is computed by the 'fad' metrics, which sweep.evaluate.metrics"):
        _sweep("sweep.metric=fad_vggish")


def test_the_registry_computes_ranking_metrics_as_the_evaluation_does():
    import numpy as np

    scores = np.random.default_rng(0).normal(size=(40, 50))
    targets = np.arange(40) % 50
    ranks = registry.target_ranks(scores, targets)
    logged = registry.ranking_metrics(scores, targets, "esc")
    for name in ("esc_top1", "esc_top5", "esc_top10", "esc_map10"):
        assert math.isclose(float(np.mean(REGISTRY[name].compute(ranks))), logged[name])
    assert dataclasses.is_dataclass(REGISTRY["fd_esc"])
