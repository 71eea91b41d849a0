"""ESC-50 clips -> log-mel spectrograms, computed once per setting, cached, then streamed.

The cache is a Hugging Face `datasets` table on disk under a key derived from the mel settings and
the source's identity (file names, sizes and modification times), so changing either recomputes
and nothing stale is ever read. Training streams it in shuffled batches (`SpectrogramBatches`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
import torch.utils.data

from core.audio import BadAudioError, MelSettings, MelTransform, decode_audio
from core.config import DataConfig
from core.errors import UserError
from core.esc50 import is_local_source, read_clips, unlisted_audio_files

log = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when the stored layout or the transform changes


def mel_settings(data: DataConfig) -> MelSettings:
    return MelSettings(
        sample_rate=data.sample_rate,
        clip_seconds=data.clip_seconds,
        resolution=data.resolution,
        n_fft=data.n_fft,
        top_db=data.top_db,
    )


def to_model_range(spectrograms: torch.Tensor, normalize: bool) -> torch.Tensor:
    """[0, 1] -> [-1, 1] when normalizing (the diffusers/Palette convention); unchanged otherwise."""
    return spectrograms * 2.0 - 1.0 if normalize else spectrograms


def from_model_range(images: torch.Tensor, normalize: bool) -> torch.Tensor:
    images = (images + 1.0) / 2.0 if normalize else images
    return images.clamp(0.0, 1.0)


def _source_fingerprint(clips: pd.DataFrame, source: str) -> str:
    digest = hashlib.sha256(os.path.abspath(source).encode() if is_local_source(source) else source.encode())
    for row in clips.itertuples():
        if "path" in clips.columns:
            stat = os.stat(row.path)
            digest.update(f"{row.filename}|{row.target}|{row.fold}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        else:
            digest.update(f"{row.filename}|{row.target}|{row.fold}|".encode())
            digest.update(hashlib.sha256(row.audio_bytes).digest())
    return digest.hexdigest()


def cache_key(clips: pd.DataFrame, source: str, settings: MelSettings) -> str:
    payload = json.dumps([CACHE_VERSION, settings.to_json(), _source_fingerprint(clips, source)])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """One torch thread: the per-clip transforms are small, and the thread pools of the
    preprocessing workers fighting over the same cores made them up to 20x slower (BENCHMARKS.md).

    It also keeps torch out of OpenMP in the forked workers: a parallel region there, after the
    parent had used OpenMP, deadlocks (GNU libgomp is not fork-safe). So no torch op may run in a
    worker outside this block.
    """
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)


@functools.lru_cache(maxsize=4)
def _transform(settings_json: str) -> MelTransform:
    return MelTransform(MelSettings.from_json(settings_json))  # the filter bank once per worker, not per batch


def _compute_batch(batch: dict, settings_json: str) -> dict:
    """`datasets.map` worker: decode and transform a batch of clips; failures become error strings."""
    settings = MelSettings.from_json(settings_json)
    spectrograms, errors = [], []
    empty = np.zeros((settings.resolution, settings.resolution), np.float32)
    sources = batch["path"] if "path" in batch else batch["audio_bytes"]
    with _single_threaded():
        transform = _transform(settings_json)
        for name, source in zip(batch["filename"], sources):
            try:
                samples = decode_audio(source, settings.sample_rate, settings.clip_seconds, name=name)
                spectrograms.append(transform.spectrogram(samples))
                errors.append("")
            except BadAudioError as error:  # collected so one scan reports every bad file at once
                spectrograms.append(empty)
                errors.append(str(error))
    return {"spectrogram": np.stack(spectrograms), "error": errors}  # one array: a cheaper Arrow write


def build_spectrogram_cache(data: DataConfig, show_progress: bool = True) -> datasets.Dataset:
    """Every clip of `data.source` (all folds) as a cached table: filename, fold, target, category, spectrogram."""
    datasets.disable_caching()  # our own key decides reuse; datasets' fingerprint cache would double the disk
    clips = read_clips(data.source, hub_split=data.hub_split)
    if "path" in clips.columns:  # an ESC-50 folder: audio it does not list is ignored, but say so
        unlisted = unlisted_audio_files(data.source)
        if unlisted:
            shown = ", ".join(unlisted[:5]) + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")
            log.warning("%d audio file(s) in %s are not listed in meta/esc50.csv and are ignored: %s",
                        len(unlisted), data.source, shown)  # fmt: skip
    settings = mel_settings(data)
    cache_dir = Path(data.cache_dir).expanduser() / cache_key(clips, data.source, settings)
    if (cache_dir / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(cache_dir))

    workers = data.preprocess_workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(clips) // 16))  # process start-up costs more than tiny sets gain
    keep = [c for c in ("filename", "fold", "target", "category", "path", "audio_bytes") if c in clips.columns]
    table = datasets.Dataset.from_pandas(clips[keep], preserve_index=False)
    features = datasets.Features(
        {
            **{k: v for k, v in table.features.items()},
            "spectrogram": datasets.Array2D((settings.resolution, settings.resolution), "float32"),
            "error": datasets.Value("string"),
        }
    )
    if not show_progress:
        datasets.disable_progress_bars()
    table = table.map(
        _compute_batch,
        batched=True,
        batch_size=16,
        num_proc=workers if workers > 1 else None,
        fn_kwargs={"settings_json": settings.to_json()},
        features=features,
        desc="log-mel spectrograms",
    )
    errors = [e for e in table["error"] if e]
    if errors:
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        raise UserError(f"{len(errors)} bad audio file(s) in {data.source}: {shown}")
    table = table.remove_columns([c for c in ("error", "path", "audio_bytes") if c in table.column_names])
    _save_atomically(table, cache_dir)
    return datasets.load_from_disk(str(cache_dir))


def _save_atomically(table: datasets.Dataset, cache_dir: Path) -> None:
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.", dir=cache_dir.parent))
    try:
        table.save_to_disk(str(staging))
        try:
            os.replace(staging, cache_dir)
        except OSError:  # another process finished first: its copy is as good as ours
            if not (cache_dir / "dataset_info.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def select_folds(table: datasets.Dataset, folds: list[int] | tuple[int, ...]) -> datasets.Dataset:
    if not folds:
        return table
    selected = table.filter(lambda fold: fold in set(folds), input_columns="fold")
    if len(selected) == 0:
        raise UserError(f"no clips are in folds {list(folds)} (data.folds)")
    return selected


class SpectrogramBatches(torch.utils.data.IterableDataset):
    """Shuffled batches of {spectrogram (B, R, R) in [0, 1], target (B,)}: this process's share only.

    Shuffled before it is split so that, with the same seed on every process, the shares are
    disjoint and change from epoch to epoch (`set_epoch` re-seeds the shuffle). Whole batches are
    cut from Arrow and converted at once, about 5x faster than converting rows one at a time and
    collating them (2,000 cached clips: 0.08 s against 0.38 s, BENCHMARKS.md), which matters once a
    GPU step takes milliseconds. A DataLoader takes it with `batch_size=None`.
    """

    def __init__(
        self, table: datasets.Dataset, batch_size: int, shuffle_buffer: int, seed: int, rank: int = 0,
        world_size: int = 1,
    ) -> None:  # fmt: skip
        from datasets.distributed import split_dataset_by_node

        stream = table.select_columns(["spectrogram", "target"]).to_iterable_dataset()
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
        if world_size > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        self.stream = stream.with_format("torch")
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id > 0:
            return  # the table is one shard: one loader worker reads it, as datasets itself would
        yield from self.stream.iter(batch_size=self.batch_size, drop_last_batch=True)
