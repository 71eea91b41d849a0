"""ESC-50 -> cached log-mel spectrograms -> shuffled batches split per process."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter

import datasets
import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from core.config import DataConfig
from core.errors import UserError
from core.esc50 import ESC50_CATEGORIES, read_clips
from core.spectrograms import (
    SpectrogramBatches,
    build_spectrogram_cache,
    from_model_range,
    select_clips,
    to_model_range,
    training_clips,
)


def test_esc50_mini_metadata_counts_labels_and_folds(esc50_mini) -> None:
    clips = read_clips(str(esc50_mini))
    assert len(clips) == 200
    assert Counter(clips["target"]) == {target: 4 for target in range(50)}
    assert all(ESC50_CATEGORIES[t] == c for t, c in zip(clips["target"], clips["category"]))
    fold4 = read_clips(str(esc50_mini), folds=[4])
    assert 0 < len(fold4) < 200 and set(fold4["fold"]) == {4}
    with pytest.raises(UserError, match="folds"):
        read_clips(str(esc50_mini), folds=[1])  # esc50-mini has no fold-1 clip


def test_cache_shapes_ranges_and_reuse(esc50_mini, spectrogram_cache_dir) -> None:
    config = DataConfig(source=str(esc50_mini), resolution=32, cache_dir=str(spectrogram_cache_dir))
    table = build_spectrogram_cache(config, show_progress=False)
    assert len(table) == 200
    spectrograms = np.asarray(table.with_format("numpy")["spectrogram"])
    assert spectrograms.shape == (200, 32, 32) and spectrograms.dtype == np.float32
    assert spectrograms.min() >= 0.0 and spectrograms.max() == pytest.approx(1.0)
    assert spectrograms.std() > 0.1  # real content, not a constant
    again = build_spectrogram_cache(config, show_progress=False)  # a hit: same files on disk
    assert again.cache_files[0]["filename"] == table.cache_files[0]["filename"]
    other = build_spectrogram_cache(
        DataConfig(source=str(esc50_mini), resolution=32, top_db=60.0, cache_dir=str(spectrogram_cache_dir)),
        show_progress=False,
    )
    assert other.cache_files[0]["filename"] != table.cache_files[0]["filename"]  # new setting, new key
    fold4 = training_clips(DataConfig(source=str(esc50_mini), folds=[4]))
    assert len(select_clips(table, list(fold4["filename"]))) == len(read_clips(str(esc50_mini), folds=[4]))
    # Held-out recordings leave training whole, every take: none of their recordings is trained on.
    kept = training_clips(DataConfig(source=str(esc50_mini), holdout_recordings=3))
    held = read_clips(str(esc50_mini)).loc[lambda c: ~c["filename"].isin(kept["filename"])]
    assert len(kept) == 76 and not set(kept["src_file"]) & set(held["src_file"])
    assert set(kept["target"]) == set(range(50))  # every class keeps a recording to learn from


def test_parallel_and_serial_preprocessing_give_the_same_table_in_the_csvs_order(tmp_path, esc50_mini) -> None:
    from core.audio import MelTransform, decode_audio
    from core.spectrograms import mel_settings

    tables = []
    for workers in (1, 2):
        config = DataConfig(source=str(esc50_mini), resolution=16, cache_dir=str(tmp_path / f"w{workers}"),
                            preprocess_workers=workers)  # fmt: skip
        tables.append(build_spectrogram_cache(config, show_progress=False))
    serial, parallel = tables
    assert serial.features == parallel.features
    assert {name: str(feature) for name, feature in serial.features.items() if name != "spectrogram"} == {
        "filename": "Value('string')", "fold": "Value('int64')", "target": "Value('int64')",
        "category": "Value('string')",
    }  # fmt: skip
    clips = read_clips(str(esc50_mini))
    for column in ("filename", "fold", "target", "category"):
        assert serial[column] == parallel[column] == clips[column].tolist(), column
    serial_spectrograms = np.asarray(serial.with_format("numpy")["spectrogram"])
    np.testing.assert_array_equal(serial_spectrograms, np.asarray(parallel.with_format("numpy")["spectrogram"]))
    settings = mel_settings(config)
    last = clips.iloc[-1]  # the last chunk's last clip: nothing shifted or dropped on the way
    expected = MelTransform(settings).spectrogram(
        decode_audio(last["path"], settings.sample_rate, settings.clip_seconds)
    )
    np.testing.assert_array_equal(serial_spectrograms[-1], expected)


def test_workers_build_the_cache_after_the_parent_ran_parallel_torch(tmp_path, esc50_mini) -> None:
    """Forked preprocessing workers run torch: after the parent had used OpenMP, an unguarded torch op
    in a worker deadlocked (libgomp is not fork-safe). Run in a child so a hang fails, not stalls."""
    script = f"""
import torch
from core.config import DataConfig
from core.spectrograms import build_spectrogram_cache
torch.set_num_threads(2)
torch.ones(4_000_000).exp().sum()  # an OpenMP parallel region in the parent
config = DataConfig(source={str(esc50_mini)!r}, resolution=16, cache_dir={str(tmp_path)!r}, preprocess_workers=2)
print(len(build_spectrogram_cache(config, show_progress=False)))
"""
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the hung workers too
        child.communicate()
        pytest.fail("building the cache in 2 workers hung after torch had run in parallel in the parent")
    assert child.returncode == 0, stderr[-2000:]
    assert stdout.split()[-1] == "200"


def test_cache_is_invalidated_when_a_file_changes(tmp_path, esc50_mini) -> None:
    source = tmp_path / "esc"
    (source / "meta").mkdir(parents=True)
    (source / "audio").mkdir()
    table = pd.read_csv(esc50_mini / "meta" / "esc50.csv").head(6)
    table.to_csv(source / "meta" / "esc50.csv", index=False)
    for name in table["filename"]:
        shutil.copy(esc50_mini / "audio" / name, source / "audio" / name)
    config = DataConfig(source=str(source), resolution=16, cache_dir=str(tmp_path / "cache"))
    first = np.asarray(build_spectrogram_cache(config, show_progress=False).with_format("numpy")["spectrogram"])
    changed = source / "audio" / sorted(table["filename"])[0]  # the first row of the sorted cache
    samples, rate = soundfile.read(changed)
    soundfile.write(changed, samples[::-1].copy(), rate)
    second = np.asarray(build_spectrogram_cache(config, show_progress=False).with_format("numpy")["spectrogram"])
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert not np.allclose(first[0], second[0]) and np.allclose(first[1:], second[1:])


@pytest.mark.parametrize("normalize", [True, False])
def test_model_range_per_normalization_mode(normalize: bool) -> None:
    spectrograms = torch.rand(4, 1, 8, 8)
    images = to_model_range(spectrograms, normalize)
    low, high = (-1.0, 1.0) if normalize else (0.0, 1.0)
    assert images.min() >= low and images.max() <= high
    assert (images.min() < -0.5) == normalize
    torch.testing.assert_close(from_model_range(images, normalize), spectrograms)


def _fingerprints(batches) -> list[str]:
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for batch in batches for image in batch["spectrogram"]]


def test_batches_split_disjoint_halves_and_reshuffle_per_epoch(esc50_mini, spectrogram_cache_dir) -> None:
    config = DataConfig(source=str(esc50_mini), resolution=32, cache_dir=str(spectrogram_cache_dir))
    table = build_spectrogram_cache(config, show_progress=False)
    in_table_order = _fingerprints([{"spectrogram": table.with_format("torch")["spectrogram"]}])
    assert len(set(in_table_order)) == 200  # every clip is told apart by its spectrogram

    def drawn(rank: int, epoch: int, batch_size: int = 10) -> list[str]:
        batches = SpectrogramBatches(table, batch_size, shuffle_buffer=64, seed=1, rank=rank, world_size=2)
        batches.set_epoch(epoch)
        return _fingerprints(batches)

    rank0, rank1 = drawn(0, 0), drawn(1, 0)
    assert len(rank0) == len(rank1) == 100
    assert set(rank0).isdisjoint(rank1) and set(rank0) | set(rank1) == set(in_table_order)
    assert rank0 != in_table_order[0::2]  # shuffled, not the table's order
    assert drawn(0, 1) != rank0  # a new epoch, a new order
    assert drawn(0, 0) == rank0  # repeatable
    assert len(drawn(0, 0, batch_size=16)) == 96  # a last, short batch is dropped

    batch = next(iter(SpectrogramBatches(table, 8, shuffle_buffer=64, seed=1)))
    assert batch["spectrogram"].shape == (8, 32, 32) and batch["spectrogram"].dtype == torch.float32
    assert batch["target"].shape == (8,) and batch["target"].dtype == torch.int64


def test_batches_through_loader_workers_draw_each_clip_once(esc50_mini, spectrogram_cache_dir) -> None:
    """With DataLoader workers the one-shard stream is read by one worker only: no clip twice."""
    config = DataConfig(source=str(esc50_mini), resolution=32, cache_dir=str(spectrogram_cache_dir))
    table = build_spectrogram_cache(config, show_progress=False)
    batches = SpectrogramBatches(table, 20, shuffle_buffer=64, seed=3)
    loaded = _fingerprints(DataLoader(batches, batch_size=None, num_workers=2))
    assert len(loaded) == 200 and len(set(loaded)) == 200
    assert loaded == _fingerprints(batches)  # the same order as without workers


def test_hub_schema_dataset_built_locally(tmp_path, esc50_mini) -> None:
    """The hub path (ESC-50 columns + an `audio` column) read through `datasets` from a local folder."""
    table = pd.read_csv(esc50_mini / "meta" / "esc50.csv").head(4)
    audio = [{"bytes": (esc50_mini / "audio" / name).read_bytes(), "path": name} for name in table["filename"]]
    hub = datasets.Dataset.from_pandas(table, preserve_index=False).add_column("audio", audio)
    hub = hub.cast_column("audio", datasets.Audio())
    folder = tmp_path / "hub_esc50"
    folder.mkdir()
    hub.to_parquet(str(folder / "train.parquet"))

    clips = read_clips(str(folder))
    assert list(clips["filename"]) == sorted(table["filename"])
    assert all(isinstance(b, bytes) and len(b) > 1000 for b in clips["audio_bytes"])
    config = DataConfig(source=str(folder), resolution=16, cache_dir=str(tmp_path / "cache"))
    spectrograms = build_spectrogram_cache(config, show_progress=False)
    assert len(spectrograms) == 4 and np.asarray(spectrograms[0]["spectrogram"]).shape == (16, 16)


def test_unreachable_hub_id_names_the_ways_to_provide_data() -> None:
    with pytest.raises(UserError, match="ashraq/esc50.*data.source"):
        read_clips("ashraq/esc50")
