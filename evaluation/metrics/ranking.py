"""Ranking metrics from class scores: top-k accuracy and mAP@10, for CLAP (`ca_*`) and the offline scorer (`esc_*`).

Each metric is the mean over clips of a per-clip score of the rank of the clip's own class (`RANK_SCORES`),
so the value and its bootstrap interval (`evaluation.intervals.bootstrap_ranking`) come from one definition.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TOP_K = (1, 5, 10)
MAP_AT = 10
# name -> per-clip score of the 0-based rank of the target; the metric is its mean over clips.
RANK_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    **{f"top{k}": (lambda ranks, k=k: (ranks < k).astype(np.float64)) for k in TOP_K},
    # One relevant class per clip: average precision is 1 / (1-based rank) within MAP_AT, else 0.
    f"map{MAP_AT}": lambda ranks: np.where(ranks < MAP_AT, 1.0 / (ranks + 1), 0.0),
}


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target class among all classes, highest score first.

    Ties are counted against the target: rank = number of *other* classes scoring at least as high.
    A scorer that gives every class the same score therefore ranks the target last, never first,
    so a constant (broken) model cannot earn accuracy from the order of the class list.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(targets):
        raise ValueError(f"scores {scores.shape} do not match {len(targets)} targets")
    if not np.isfinite(scores).all():
        raise ValueError("class scores contain NaN or infinite values")
    if len(targets) and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets must lie in 0..{scores.shape[1] - 1}")
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    return (scores >= target_scores).sum(axis=1) - 1


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of rows whose target is among the k best-scored classes."""
    return float(np.mean(target_ranks(scores, targets) < k))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray, at: int = MAP_AT) -> float:
    """mAP@`at` with one relevant class per row, as LAION-CLAP's zero-shot evaluation computes it.

    With a single relevant item, average precision is the reciprocal of its (1-based) rank when that
    rank is within `at`, else 0; the mean over rows is the mAP.
    """
    ranks = target_ranks(scores, targets)
    return float(np.mean(np.where(ranks < at, 1.0 / (ranks + 1), 0.0)))


def ranking_metrics(scores: np.ndarray, targets: np.ndarray, prefix: str) -> dict[str, float]:
    """`{prefix}_top1, _top5, _top10, _map10`: the same code for CLAP (`ca`) and the offline scorer (`esc`)."""
    ranks = target_ranks(scores, targets)
    return {f"{prefix}_{name}": float(np.mean(score(ranks))) for name, score in RANK_SCORES.items()}


def confusion_matrix(scores: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted], the prediction being the best-scored class (lowest index on ties)."""
    predicted = np.asarray(scores).argmax(axis=1)
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(targets), predicted), 1)
    return counts
