"""The metric registry: every number evaluation logs, with its direction, its table and how it is computed.

    fad.py            fad_<model>, fad_<model>_inf      Frechet Audio Distance (needs the model's weights)
    clap_accuracy.py  ca_top1 .. ca_map10              CLAP zero-shot accuracy (needs CLAP weights)
    esc_scorer.py     fd_esc, esc_top1 .. esc_map10    the offline scorer (trained here, on real clips)
    memorization.py   memorization_<group>             share of clips that sit on a training clip
    frechet.py, ranking.py                             the maths they share

The results tables, the report, `sweep.metric` (and the mode ASHA optimizes) read this registry: a new
metric is declared once in its module's `METRICS`, and every table and report picks it up.
Logged names may carry a row prefix (`ROW_PREFIXES`): the same metric of the real or round-tripped clips.
"""

from __future__ import annotations

from evaluation.metrics import clap_accuracy, esc_scorer, fad, memorization
from evaluation.metrics.frechet import embedding_frechet_distance, frechet_distance, gaussian_statistics
from evaluation.metrics.metric import ROLES, SCORER_TABLE, STUDY_TABLE, Metric
from evaluation.metrics.ranking import (
    MAP_AT,
    RANK_SCORES,
    TOP_K,
    confusion_matrix,
    mean_average_precision,
    ranking_metrics,
    target_ranks,
    topk_accuracy,
)

REGISTRY: dict[str, Metric] = {
    metric.name: metric
    for module in (fad, clap_accuracy, esc_scorer, memorization)
    for metric in sorted(module.METRICS, key=lambda m: ROLES.index(m.role))
}
# How a row other than the generated clips' is logged: `real_fd_esc` is fd_esc of the real held-out clips.
REAL_PREFIX = "real_"  # the real held-out clips: the ceiling a model can reach
REPRESENTATION_PREFIX = "repr_"  # real clips through a generator's mel + vocoder: its representation's ceiling
ROW_PREFIXES = (REAL_PREFIX, REPRESENTATION_PREFIX)
RANKING_PREFIX = {"clap": clap_accuracy.PREFIX, "esc": esc_scorer.PREFIX}  # metric group -> ranking names' prefix
# Sections of the names logged to MLflow, which groups its charts by the part before "/": a model's scores
# under eval/, the real and round-tripped clips' (the ceilings) under ceiling/ (`ceiling/real_fd_esc`).
EVAL_SECTION, CEILING_SECTION = "eval/", "ceiling/"


def logged_name(name: str) -> str:
    """`fd_esc` -> `eval/fd_esc`, `real_fd_esc` -> `ceiling/real_fd_esc`: how evaluation logs a metric to MLflow."""
    return (CEILING_SECTION if name.startswith(ROW_PREFIXES) else EVAL_SECTION) + name


def plain_name(key: str) -> str:
    """The metric a logged name is (`eval/fd_esc` -> `fd_esc`); names logged before sections pass unchanged."""
    for section in (EVAL_SECTION, CEILING_SECTION):
        if key.startswith(section):
            return key[len(section) :]
    return key


def find_metric(name: str) -> Metric | None:
    """The registered metric `name` names, row prefix (`real_`, `repr_`) and all; None when it is none."""
    for prefix in ROW_PREFIXES:
        if name.startswith(prefix) and name[len(prefix) :] in REGISTRY:
            return REGISTRY[name[len(prefix) :]]
    return REGISTRY.get(name)


def lower_is_better(name: str) -> bool:
    metric = find_metric(name)
    if metric is None:
        raise KeyError(f"'{name}' is not a registered metric")
    return metric.lower_is_better


def summary_metrics() -> list[str]:
    """What the report summarizes per configuration, in table order: the distances and the rankings."""
    return [m.name for m in REGISTRY.values() if m.role in ("distance", "ranking")]


def diagnostic_metrics() -> list[str]:
    return [m.name for m in REGISTRY.values() if m.role == "diagnostic"]


def table_metrics(table: str) -> list[Metric]:
    return [m for m in REGISTRY.values() if m.table == table]


__all__ = [
    "MAP_AT", "REAL_PREFIX", "REGISTRY", "REPRESENTATION_PREFIX", "ROW_PREFIXES", "RANKING_PREFIX", "RANK_SCORES",
    "SCORER_TABLE", "STUDY_TABLE", "TOP_K",
    "CEILING_SECTION", "EVAL_SECTION", "Metric", "confusion_matrix", "logged_name", "plain_name",
    "diagnostic_metrics", "embedding_frechet_distance", "find_metric",
    "frechet_distance", "gaussian_statistics", "lower_is_better", "mean_average_precision", "ranking_metrics",
    "summary_metrics", "table_metrics", "target_ranks", "topk_accuracy",
]  # fmt: skip
