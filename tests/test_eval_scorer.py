"""The offline ESC scorer: trained on esc50-mini's reference clips, it must place real clips it never saw
well above chance (1/50) and white noise at about chance; it is cached and reused."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from core.esc50 import ESC50_CATEGORIES
from evaluation.evaluate import score_generated, score_real
from evaluation.protocol import Preprocessing, split_reference
from evaluation.scorer import ScorerSettings, load_or_train_scorer, scorer_key, train_scorer

CHANCE = 1 / 50


def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One evaluation cache for the whole session: the scorer is trained once, by whichever test needs it first."""
    return tmp_path_factory.getbasetemp() / "evaluation-cache"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, esc50_mini):
    split = split_reference(str(esc50_mini), trained_on=[])  # scoring a generator that heard none of it
    started = time.perf_counter()
    # With the evaluator's preprocessing, so that it is the scorer `score_real` below loads from the cache.
    scorer = load_or_train_scorer(
        split, ScorerSettings(), shared_cache(tmp_path_factory), show_progress=False, preprocessing=Preprocessing()
    )
    print(f"scorer ready in {time.perf_counter() - started:.1f} s; held-out: {scorer.held_out}")
    return split, scorer


def test_scorer_places_unseen_real_clips_well_above_chance(trained, tmp_path_factory, esc50_mini):
    split, scorer = trained
    # The last recording (every take) of each of the 47 classes with two or more: recordings it never heard.
    assert len(split.classes) == 47 and set(split.held_out["target"]) == set(split.classes)
    assert not set(split.held_out["src_file"]) & set(split.reference["src_file"])
    assert scorer.held_out["esc_top1"] >= 7.5 * CHANCE
    assert scorer.held_out["esc_top5"] >= 0.3
    assert scorer.reference_embeddings.shape == (len(split.reference), ScorerSettings().embedding_dim)
    # The "real data" row is the same number, computed again through the scoring path.
    real = score_real(
        str(esc50_mini), ["esc"], cache_dir=shared_cache(tmp_path_factory), show_progress=False, trained_on=[]
    )
    assert real["esc_top1"] == pytest.approx(scorer.held_out["esc_top1"])
    assert real["fd_esc"] > 0


def test_scorer_is_cached_and_its_key_follows_data_and_settings(trained, tmp_path_factory, esc50_mini):
    split, scorer = trained
    cache = shared_cache(tmp_path_factory)
    path = cache / "esc_scorer" / f"{scorer_key(split, ScorerSettings(), Preprocessing())}.pt"
    modified = path.stat().st_mtime_ns
    again = load_or_train_scorer(split, ScorerSettings(), cache, show_progress=False, preprocessing=Preprocessing())
    assert path.stat().st_mtime_ns == modified and again.held_out == scorer.held_out
    assert np.array_equal(again.reference_embeddings, scorer.reference_embeddings)
    key = scorer_key(split, ScorerSettings())
    assert scorer_key(split, ScorerSettings(epochs=10)) != key
    assert scorer_key(split, ScorerSettings(sample_rate=16000)) != key
    assert scorer_key(split_reference(str(esc50_mini), [4], trained_on=[]), ScorerSettings()) != key
    treated = scorer_key(split, ScorerSettings(), Preprocessing())
    assert scorer_key(split, ScorerSettings(), Preprocessing(peak=0.5)) != treated


def write_noise(folder: Path, per_class: int) -> Path:
    rows = []
    for target, category in enumerate(ESC50_CATEGORIES):
        for i in range(per_class):
            relative = f"{category}/{i}.wav"
            (folder / category).mkdir(parents=True, exist_ok=True)
            noise = np.random.default_rng(target * per_class + i).normal(0, 0.3, 5 * 22050).clip(-1, 1)
            soundfile.write(folder / relative, noise, 22050)
            rows.append({"file": relative, "target": target, "category": category})
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "target", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_white_noise_scores_about_chance_and_far_from_real(trained, tmp_path, tmp_path_factory, esc50_mini):
    noise = write_noise(tmp_path / "noise", per_class=2)
    started = time.perf_counter()
    metrics = score_generated(
        noise, str(esc50_mini), ["esc"], cache_dir=shared_cache(tmp_path_factory), show_progress=False, real_row=True,
        trained_on=[],
    )  # fmt: skip
    print(f"scored 100 clips + 50 real in {time.perf_counter() - started:.1f} s: {metrics}")
    names = ("esc_top1", "esc_top5", "esc_top10", "esc_map10", "fd_esc")
    values = set(names) | {f"{name}_ci_{end}" for name in names for end in ("low", "high")} | {"fd_esc_inf"}
    assert set(metrics) == values | {f"real_{name}" for name in values}  # no memorization: no training clips
    assert metrics["esc_top1"] <= 3 * CHANCE
    assert metrics["esc_top10"] <= 0.4  # chance: 0.2
    assert metrics["real_esc_top1"] >= 7.5 * CHANCE
    assert metrics["fd_esc"] > 2 * metrics["real_fd_esc"]


def test_missing_optional_metrics_are_skipped_not_fatal(trained, tmp_path, tmp_path_factory, esc50_mini):
    noise = write_noise(tmp_path / "noise", per_class=1)
    metrics = score_generated(
        noise, str(esc50_mini), ["esc", "fad", "clap"], cache_dir=shared_cache(tmp_path_factory),
        show_progress=False, optional_metrics=True, ckpt_dir=str(tmp_path / "no-weights"), trained_on=[], bootstrap=0,
    )  # fmt: skip
    assert set(metrics) == {"esc_top1", "esc_top5", "esc_top10", "esc_map10", "fd_esc", "fd_esc_inf"}  # no intervals


def test_training_is_repeatable_whatever_the_callers_random_state(esc50_mini):
    split = split_reference(str(esc50_mini), trained_on=[])
    settings = ScorerSettings(epochs=2)
    torch.manual_seed(1)
    first = train_scorer(split, settings, show_progress=False)
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    second = train_scorer(split, settings, show_progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left as it was
    assert first.held_out == second.held_out
    for name, tensor in first.net.state_dict().items():
        assert torch.equal(tensor, second.net.state_dict()[name]), name


def test_real_clips_predictions_are_cached_beside_the_scorer_and_equal_fresh_ones(trained):
    from evaluation.scorer import cached_predictions

    split, scorer = trained
    first = cached_predictions(scorer, split.held_out, show_progress=False)
    cached = sorted(scorer.cache_path.parent.glob(f"{scorer.cache_path.stem}-predictions-*.npz"))
    assert cached, "nothing cached"
    again = cached_predictions(scorer, split.held_out, show_progress=False)
    fresh = scorer.predict(split.held_out, show_progress=False)
    for one, other, new in zip(first, again, fresh):
        np.testing.assert_array_equal(one, other)
        np.testing.assert_allclose(one, new, rtol=1e-5, atol=1e-6)
