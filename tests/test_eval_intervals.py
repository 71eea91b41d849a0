"""Intervals: bootstrap over clips, FD without its sample-size bias, t intervals and paired differences over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.intervals import (
    bootstrap_frechet,
    bootstrap_ranking,
    frechet_infinity,
    paired_difference,
    t_interval,
)
from evaluation.metrics import embedding_frechet_distance, ranking_metrics


def test_fd_infinity_removes_the_sample_size_bias():
    rng = np.random.default_rng(0)
    dimensions = 32
    reference = rng.normal(size=(4000, dimensions))
    same_distribution = rng.normal(size=(300, dimensions))  # true distance 0
    biased = embedding_frechet_distance(reference, same_distribution)
    assert biased > 1.0  # ~ d/N: what makes sets of different sizes incomparable
    assert abs(frechet_infinity(reference, same_distribution, seed=0)) < biased / 3
    shifted = same_distribution + 1.0  # true distance d * 1^2 = 32
    assert frechet_infinity(reference, shifted, seed=0) == pytest.approx(dimensions, rel=0.1)


def test_bootstrap_interval_of_fd_holds_the_value_and_narrows_with_more_clips():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(400, 8))
    widths = []
    for count in (40, 400):
        generated = rng.normal(loc=0.5, size=(count, 8))
        value = embedding_frechet_distance(reference, generated)
        low, high = bootstrap_frechet(reference, generated, draws=200, seed=0)
        assert low <= value <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2
    # Few clips in many dimensions: redrawn sets inflate FD's bias, yet the interval still holds the estimate.
    few, other = rng.normal(size=(40, 64)), rng.normal(size=(60, 64))
    low, high = bootstrap_frechet(few, other, draws=200, seed=0)
    assert low <= embedding_frechet_distance(few, other) <= high


def test_bootstrap_of_fd_redraws_whole_clips_when_clips_have_several_rows():
    rng = np.random.default_rng(2)
    reference, generated = rng.normal(size=(60, 4)), rng.normal(size=(90, 4))
    owners_reference, owners_generated = np.repeat(np.arange(20), 3), np.repeat(np.arange(30), 3)
    low, high = bootstrap_frechet(reference, generated, 100, 0, owners_reference, owners_generated)
    assert 0 <= low < high


def test_ranking_intervals_hold_the_values_and_collapse_when_every_clip_agrees():
    rng = np.random.default_rng(3)
    scores, targets = rng.normal(size=(200, 50)), rng.integers(0, 50, 200)
    scores[np.arange(100), targets[:100]] += 3.0  # half the clips ranked right
    ranks = (scores >= scores[np.arange(200), targets][:, None]).sum(axis=1) - 1
    values, intervals = ranking_metrics(scores, targets, "esc"), bootstrap_ranking(ranks, "esc", 500, 0)
    assert set(intervals) == set(values)
    for name, (low, high) in intervals.items():
        assert low <= values[name] <= high and high - low > 0.02
    assert bootstrap_ranking(np.zeros(30, dtype=int), "esc", 100)["esc_top1"] == (1.0, 1.0)


def test_t_interval_and_paired_difference_against_hand_computed_values():
    low, high = t_interval(np.array([1.0, 2.0, 3.0]))  # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert (low, high) == pytest.approx((2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)), abs=1e-3)
    assert all(math.isnan(v) for v in t_interval(np.array([5.0])))
    # Seeds pair up: differences 1, 1.2, 0.8 (seed "3" has no partner and is left out).
    mean, low, high, pairs = paired_difference({"0": 2.0, "1": 3.2, "2": 1.8, "3": 9.0}, {"0": 1.0, "1": 2.0, "2": 1.0})
    assert pairs == 3 and mean == pytest.approx(1.0)
    assert (low, high) == pytest.approx((1 - 4.3027 * 0.2 / math.sqrt(3), 1 + 4.3027 * 0.2 / math.sqrt(3)), abs=1e-3)
    assert low > 0  # resolved: the interval excludes zero, though the unpaired spreads overlap
