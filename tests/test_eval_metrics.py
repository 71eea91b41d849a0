"""Frechet distance against closed forms, and top-k / mAP@10 on hand-built score matrices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evaluation.metrics import (
    confusion_matrix,
    embedding_frechet_distance,
    frechet_distance,
    gaussian_statistics,
    mean_average_precision,
    ranking_metrics,
    target_ranks,
    topk_accuracy,
)


def random_rotation(dimension: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dimension, dimension)))
    return q * np.sign(np.diag(r))


def test_frechet_distance_of_one_dimensional_gaussians_is_mean_and_std_gap():
    # N(m1, s1^2) vs N(m2, s2^2): d^2 = (m1 - m2)^2 + (s1 - s2)^2
    value = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert value == pytest.approx((1 + 2) ** 2 + (2 - 3) ** 2, rel=1e-9)


def test_frechet_distance_of_commuting_covariances_matches_closed_form():
    # Covariances sharing eigenvectors: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(0)
    rotation = random_rotation(6, rng)
    a, b = rng.uniform(0.1, 5.0, 6), rng.uniform(0.1, 5.0, 6)
    sigma1, sigma2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_of_a_gaussian_with_itself_is_zero_and_sample_estimates_converge():
    rng = np.random.default_rng(1)
    rotation = random_rotation(4, rng)
    sigma = rotation @ np.diag([0.5, 1.0, 2.0, 4.0]) @ rotation.T
    assert frechet_distance(np.ones(4), sigma, np.ones(4), sigma) == pytest.approx(0.0, abs=1e-9)
    # Samples of N(0, S) and N(0.5, S): estimated statistics give a distance near |0.5|^2 * 4 = 1.
    first = rng.multivariate_normal(np.zeros(4), sigma, size=20000)
    second = rng.multivariate_normal(np.full(4, 0.5), sigma, size=20000)
    assert frechet_distance(*gaussian_statistics(first), *gaussian_statistics(second)) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("clips, dimensions", [(40, 8), (12, 64)])  # full-rank, then singular (fewer clips)
def test_frechet_distance_equals_the_packages_calculate_frechet_distance(clips, dimensions):
    from frechet_audio_distance import FrechetAudioDistance

    rng = np.random.default_rng(2)
    x = rng.normal(size=(clips, dimensions))
    y = rng.normal(size=(clips, dimensions)) @ rng.normal(size=(dimensions, dimensions)) + 0.3
    mu1, sigma1 = gaussian_statistics(x)
    mu2, sigma2 = gaussian_statistics(y)
    # The package's method does not use `self`: call it on the arrays directly.
    theirs = FrechetAudioDistance.calculate_frechet_distance(None, mu1, sigma1, mu2, sigma2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(theirs, rel=1e-6)
    assert theirs > 1.0


@pytest.mark.parametrize(
    "first_clips, second_clips, dimensions",
    [(12, 9, 64), (3, 40, 16), (40, 30, 8), (300, 200, 16)],  # the rows' SVD, then the covariances' form
)
def test_embedding_frechet_distance_equals_the_packages_on_the_statistics(first_clips, second_clips, dimensions):
    from frechet_audio_distance import FrechetAudioDistance

    rng = np.random.default_rng(first_clips)
    x = rng.normal(size=(first_clips, dimensions)) * 2.0
    y = rng.normal(size=(second_clips, dimensions)) @ rng.normal(size=(dimensions, dimensions)) + 0.3
    theirs = FrechetAudioDistance.calculate_frechet_distance(None, *gaussian_statistics(x), *gaussian_statistics(y))
    assert embedding_frechet_distance(x, y) == pytest.approx(theirs, rel=1e-6)
    assert embedding_frechet_distance(y, x) == pytest.approx(theirs, rel=1e-6)  # symmetric
    assert embedding_frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9 * theirs)
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        embedding_frechet_distance(x[:1], y)
    with pytest.raises(ValueError, match="differ in dimension"):
        embedding_frechet_distance(x, y[:, :-1])


def test_ranks_topk_and_map_on_a_hand_built_matrix():
    # Four clips, 12 classes. Row 0: target best (rank 1). Row 1: target 5th. Row 2: target 10th.
    # Row 3: target 11th (outside top-10 and mAP@10).
    scores = np.tile(-np.arange(12, dtype=float), (4, 1))  # class c scores -c: class 0 best, class 11 worst
    targets = np.array([0, 4, 9, 10])
    assert target_ranks(scores, targets).tolist() == [0, 4, 9, 10]
    assert topk_accuracy(scores, targets, 1) == 0.25
    assert topk_accuracy(scores, targets, 5) == 0.5
    assert topk_accuracy(scores, targets, 10) == 0.75
    assert mean_average_precision(scores, targets) == pytest.approx((1 + 1 / 5 + 1 / 10 + 0) / 4)
    assert ranking_metrics(scores, targets, "ca") == {
        "ca_top1": 0.25,
        "ca_top5": 0.5,
        "ca_top10": 0.75,
        "ca_map10": pytest.approx(0.325),
    }


def test_ties_count_against_the_target():
    # Constant scores: every other class ties with the target, so it ranks last, not first.
    constant = np.zeros((3, 50))
    targets = np.array([0, 7, 49])
    assert target_ranks(constant, targets).tolist() == [49, 49, 49]
    assert ranking_metrics(constant, targets, "esc")["esc_top10"] == 0.0
    # One tie with a class listed before the target: rank 2, whichever index order.
    scores = np.array([[0.9, 0.9, 0.1], [0.1, 0.9, 0.9]])
    assert target_ranks(scores, np.array([1, 1])).tolist() == [1, 1]
    assert mean_average_precision(scores, np.array([1, 1])) == 0.5


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="targets"):
        target_ranks(np.zeros((1, 3)), np.array([3]))
    with pytest.raises(ValueError, match="do not match"):
        target_ranks(np.zeros((2, 3)), np.array([0]))


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (7, 12), elements=st.floats(-5, 5)), st.lists(st.integers(0, 11), min_size=7, max_size=7))
def test_accuracy_grows_with_k_and_map_lies_between_top1_and_top10(scores, targets):
    metrics = ranking_metrics(scores, np.array(targets), "x")
    assert metrics["x_top1"] <= metrics["x_top5"] <= metrics["x_top10"]
    assert metrics["x_top1"] <= metrics["x_map10"] <= metrics["x_top10"]


def test_confusion_matrix_counts_best_scored_class():
    scores = np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]])
    counts = confusion_matrix(scores, np.array([1, 1, 2]), 3)
    assert counts.tolist() == [[0, 0, 0], [1, 1, 0], [0, 0, 1]]
