"""Uncertainty of every number: bootstrap intervals over clips, FD without its sample-size bias, and
intervals over seeds (plain and paired) for the report.

- **Bootstrap over clips** (95%): the clips of each set are redrawn with replacement and the metric
  recomputed. Accuracies take the percentiles of the redrawn values. A Frechet distance takes the
  normal interval from their standard error instead, both sets redrawn (the reference is a sample too):
  a redrawn set holds duplicates, which inflates FD's small-sample bias, so the redrawn FDs sit above
  the estimate (on esc50-mini's 41 vs 63 clips their 2.5th percentile was above it) and their
  percentiles would not even contain it; their spread is still the estimate's sampling spread.
- **FD-infinity**: the Frechet distance is biased upwards by a term ~1/N in the number of clips N (two
  samples of one 128-d Gaussian: FD 8.1 at 400 against 2,000 clips). As FID-infinity (Chong & Forsyth,
  CVPR 2020) and FAD-infinity (Gui et al., ICASSP 2024) do, FD is computed on subsets of several sizes,
  fitted linearly against 1/N, and the fit's value at 1/N = 0 is reported: comparable across set sizes.
- **Over seeds**: a t interval of the mean; for a configuration against a baseline, a t interval of the
  mean difference over the seeds both ran (paired: seed s of one against seed s of the other).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from evaluation.metrics import RANK_SCORES, embedding_frechet_distance

CONFIDENCE = 0.95
NORMAL_QUANTILE = 1.959964  # the standard normal's 97.5th percentile
INFINITY_SIZES = 8  # subset sizes for the FD-infinity fit
MIN_INFINITY_CLIPS = 8  # fewer clips than this: no fit worth reporting
INFINITY_DRAWS = 3  # subsets drawn at each size (averaged)


def percentile_interval(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(np.asarray(samples, dtype=np.float64), [tail, 100 - tail])
    return float(low), float(high)


def _rows_of(owners: np.ndarray | None, count: int) -> list[np.ndarray]:
    """Row indices of each clip (VGGish and EnCodec give several embedding rows per clip)."""
    if owners is None:
        return [np.array([i]) for i in range(count)]
    order = np.argsort(owners, kind="stable")
    starts = np.searchsorted(owners[order], np.arange(count + 1))
    return [order[starts[i] : starts[i + 1]] for i in range(count)]


def bootstrap_frechet(
    reference: np.ndarray,
    generated: np.ndarray,
    draws: int,
    seed: int = 0,
    reference_owners: np.ndarray | None = None,
    generated_owners: np.ndarray | None = None,
    distance: Callable[[np.ndarray, np.ndarray], float] = embedding_frechet_distance,
) -> tuple[float, float]:
    """95% interval of the Frechet distance (estimate +- 1.96 bootstrap standard errors, at least 0), both sets
    redrawn clip by clip; see the module docstring for why not percentiles."""
    rng = np.random.default_rng(seed)
    ref_clips = _rows_of(
        reference_owners, int(reference_owners.max()) + 1 if reference_owners is not None else len(reference)
    )
    gen_clips = _rows_of(
        generated_owners, int(generated_owners.max()) + 1 if generated_owners is not None else len(generated)
    )
    values = []
    for _ in range(draws):
        ref_rows = np.concatenate([ref_clips[i] for i in rng.integers(0, len(ref_clips), len(ref_clips))])
        gen_rows = np.concatenate([gen_clips[i] for i in rng.integers(0, len(gen_clips), len(gen_clips))])
        values.append(distance(reference[ref_rows], generated[gen_rows]))
    estimate = distance(reference, generated)
    half = NORMAL_QUANTILE * float(np.std(values, ddof=1))
    return max(0.0, estimate - half), estimate + half


def frechet_infinity(
    reference: np.ndarray,
    generated: np.ndarray,
    seed: int = 0,
    generated_owners: np.ndarray | None = None,
    distance: Callable[[np.ndarray, np.ndarray], float] = embedding_frechet_distance,
) -> float:
    """FD extrapolated to infinitely many generated clips: the intercept of FD against 1/N (N = clips, from a
    quarter of them to all). With fewer clips than embedding dimensions the covariances are rank-deficient
    and the 1/N law only approximate: the value still removes most of the size bias (the tests), but
    compare it between sets of similar sizes."""
    rng = np.random.default_rng(seed)
    count = int(generated_owners.max()) + 1 if generated_owners is not None else len(generated)
    if count < MIN_INFINITY_CLIPS:
        return math.nan
    clips = _rows_of(generated_owners, count)
    sizes = np.unique(np.linspace(max(2, count // 4), count, INFINITY_SIZES).astype(int))
    means = []
    for size in sizes:
        values = []
        for _ in range(INFINITY_DRAWS if size < count else 1):
            chosen = rng.choice(count, size=size, replace=False)
            values.append(distance(reference, generated[np.concatenate([clips[i] for i in chosen])]))
        means.append(np.mean(values))
    slope, intercept = np.polyfit(1.0 / sizes, np.array(means), 1)
    return float(intercept)


def bootstrap_ranking(ranks: np.ndarray, prefix: str, draws: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% intervals of top-k accuracy and mAP@10 from each clip's rank of its own class."""
    ranks = np.asarray(ranks)
    rng = np.random.default_rng(seed)
    resampled = ranks[rng.integers(0, len(ranks), (draws, len(ranks)))]
    return {
        f"{prefix}_{name}": percentile_interval(score(resampled).mean(axis=1)) for name, score in RANK_SCORES.items()
    }


def t_interval(values: np.ndarray) -> tuple[float, float]:
    """95% t interval of the mean of `values` (NaN when fewer than two): SciPy's one-sample t test's."""
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(values) < 2:
        return math.nan, math.nan
    from scipy import stats

    if values.std() == 0:  # every seed agrees: SciPy's t statistic is undefined, the interval is the value
        return float(values[0]), float(values[0])
    interval = stats.ttest_1samp(values, 0.0).confidence_interval(CONFIDENCE)
    return float(interval.low), float(interval.high)


def paired_difference(values: dict, baseline: dict) -> tuple[float, float, float, int]:
    """(mean difference, interval low, high, pairs) of `values - baseline` over the keys (seeds) both have."""
    shared = sorted(set(values) & set(baseline))
    differences = np.array([values[key] - baseline[key] for key in shared], dtype=np.float64)
    if not len(differences):
        return math.nan, math.nan, math.nan, 0
    low, high = t_interval(differences)
    return float(differences.mean()), low, high, len(differences)
