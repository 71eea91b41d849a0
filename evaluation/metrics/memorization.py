"""Does a generator copy its training clips? Nearest-neighbour distances in a metric's embedding.

For each generated clip, its distance to the nearest of the generator's training clips; the same for the
real held-out clips (which the generator never heard, so their distances are what "new audio" looks
like). The memorization share is the fraction of generated clips closer to a training clip than the
10th percentile of the held-out clips' distances: about 0.1 for a generator whose clips are as new as
real unseen ones, 1.0 for one that replays its training data. Above `FLAG_SHARE` a run is flagged.
"""

from __future__ import annotations

import numpy as np

PERCENTILE = 10.0
FLAG_SHARE = 0.5  # five times what a generator as novel as real unseen clips shows


def clip_embeddings(embeddings: np.ndarray, owners: np.ndarray | None) -> np.ndarray:
    """One row per clip: the mean of its rows (VGGish embeds each second of a clip separately)."""
    if owners is None:
        return np.asarray(embeddings, dtype=np.float64)
    count = int(owners.max()) + 1
    sums = np.zeros((count, embeddings.shape[1]))
    np.add.at(sums, owners, embeddings)
    return sums / np.bincount(owners, minlength=count)[:, None]


def nearest_distances(queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query row to its nearest row of `pool`."""
    squared = (queries**2).sum(1)[:, None] + (pool**2).sum(1)[None, :] - 2 * queries @ pool.T
    return np.sqrt(np.clip(squared, 0, None).min(axis=1))


def memorization_share(generated: np.ndarray, held_out: np.ndarray, training: np.ndarray) -> float:
    """Share of generated clips nearer a training clip than real unseen clips typically are (see above)."""
    threshold = np.percentile(nearest_distances(held_out, training), PERCENTILE)
    return float(np.mean(nearest_distances(generated, training) < threshold))


def _declare() -> list:
    from evaluation.metrics.metric import SCORER_TABLE, STUDY_TABLE, Metric

    return [
        Metric(f"memorization_{group}", "memorized", True, group, table, "diagnostic",
               f"share of generated clips nearer a training clip than the {PERCENTILE:g}th percentile of real "
               f"unseen clips ({group} embeddings)", memorization_share)
        for group, table in (("fad", STUDY_TABLE), ("esc", SCORER_TABLE))
    ]  # fmt: skip


METRICS = _declare()
