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
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.utils.data
from datasets.table import InMemoryTable
from tqdm.auto import tqdm

from core.audio import BadAudioError, MelSettings, MelTransform, decode_audio
from core.config import DataConfig
from core.errors import UserError
from core.esc50 import is_local_source, read_clips, unlisted_audio_files
from core.splits import clip_set_digest, last_recordings

log = logging.getLogger(__name__)
CACHE_VERSION = 1  # bump when the stored layout or the transform changes


def mel_settings(data: DataConfig) -> MelSettings:
    """The representation a data config asks for (a preset adds what is not a config key: hop, band, scale)."""
    from core.config import PRESET_MEL

    return MelSettings(
        sample_rate=data.sample_rate,
        clip_seconds=data.clip_seconds,
        resolution=data.resolution,
        n_fft=data.n_fft,
        top_db=data.top_db,
        mel_bins=data.mel_bins,
        frames=data.frames,
        level=data.level,
        **PRESET_MEL.get(data.preset, {}),
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


def _compute_chunk(names: list[str], sources: list, settings_json: str) -> tuple[np.ndarray, list[str]]:
    """Decode and transform some clips: (spectrograms, error per clip); a failed clip gets zeros and its error."""
    with _single_threaded():  # the transform's construction runs torch too
        transform = _transform(settings_json)
        settings = transform.settings
        spectrograms = np.zeros((len(names), *settings.shape), np.float32)
        errors = [""] * len(names)
        for index, (name, source) in enumerate(zip(names, sources)):
            try:
                samples = decode_audio(source, settings.sample_rate, settings.clip_seconds, name=name)
                spectrograms[index] = transform.spectrogram(samples)
            except BadAudioError as error:  # collected so one scan reports every bad file at once
                errors[index] = str(error)
    return spectrograms, errors


def _compute_packed_chunk(chunk: tuple[list[str], list, str]) -> tuple[np.ndarray, list[str]]:
    return _compute_chunk(*chunk)


def compute_spectrograms(
    clips: pd.DataFrame, settings: MelSettings, workers: int, show_progress: bool = True
) -> tuple[np.ndarray, list[str]]:
    """Every clip's spectrogram (N, R, R) and error string ("" when it decoded), `workers` processes at once.

    A plain process pool over chunks of 32 clips, in order: `datasets.map(num_proc=...)` spent 0.5 s
    more per call on its queue manager process and its shutdown (BENCHMARKS.md).
    """
    names = list(clips["filename"])
    sources = list(clips["path"] if "path" in clips.columns else clips["audio_bytes"])
    settings_json = settings.to_json()
    chunks = [(names[i : i + 32], sources[i : i + 32], settings_json) for i in range(0, len(names), 32)]
    spectrograms, errors = [], []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            results = stack.enter_context(context.Pool(workers)).imap(_compute_packed_chunk, chunks)
        else:
            results = map(_compute_packed_chunk, chunks)
        progress = stack.enter_context(
            tqdm(total=len(names), desc="log-mel spectrograms", unit="clip", disable=not show_progress)
        )
        for chunk_spectrograms, chunk_errors in results:
            spectrograms.append(chunk_spectrograms)
            errors.extend(chunk_errors)
            progress.update(len(chunk_errors))
    return np.concatenate(spectrograms), errors


def _as_table(clips: pd.DataFrame, spectrograms: np.ndarray, fingerprint: str) -> datasets.Dataset:
    """The cache's table: the clips' metadata and their spectrograms as one Arrow column, not copied row by row."""
    shape = spectrograms.shape[1:]
    features = datasets.Features(
        {
            "filename": datasets.Value("string"),
            "fold": datasets.Value("int64"),
            "target": datasets.Value("int64"),
            "category": datasets.Value("string"),
            "spectrogram": datasets.Array2D(tuple(shape), "float32"),
        }
    )
    schema = features.arrow_schema
    columns = [pa.array(clips[name].tolist(), type=schema.field(name).type) for name in schema.names[:-1]]
    parts = np.array_split(spectrograms, -(-spectrograms.size // 2**30) or 1)  # Array2D's offsets are int32
    columns.append(pa.chunked_array([_array_2d(part, schema.field("spectrogram").type) for part in parts]))
    table = InMemoryTable(pa.Table.from_arrays(columns, schema=schema))
    # Our cache key is the fingerprint: without one, datasets hashes the whole table (0.14 s for 2,000 clips).
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features), fingerprint=fingerprint)


def _array_2d(spectrograms: np.ndarray, arrow_type: pa.DataType) -> pa.ExtensionArray:
    """(N, bins, frames) float32 as datasets' Array2D: lists (clips) of lists (rows) of float32 over the flat
    array, without converting row by row; int32 offsets, so at most 2**31 values (callers split)."""
    count, rows, columns = spectrograms.shape
    values = pa.array(spectrograms.reshape(-1))
    row_lists = pa.ListArray.from_arrays(pa.array(np.arange(0, len(values) + 1, columns, dtype=np.int32)), values)
    clip_lists = pa.ListArray.from_arrays(pa.array(np.arange(0, count * rows + 1, rows, dtype=np.int32)), row_lists)
    return pa.ExtensionArray.from_storage(arrow_type, clip_lists)


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
    key = cache_key(clips, data.source, settings)
    cache_dir = Path(data.cache_dir).expanduser() / key
    if (cache_dir / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(cache_dir))

    workers = data.preprocess_workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(clips) // 16))  # process start-up costs more than tiny sets gain
    spectrograms, errors = compute_spectrograms(clips, settings, workers, show_progress)
    errors = [e for e in errors if e]
    if errors:
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        raise UserError(f"{len(errors)} bad audio file(s) in {data.source}: {shown}")
    if not show_progress:
        datasets.disable_progress_bars()
    _save_atomically(_as_table(clips, spectrograms, key), cache_dir)
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


def training_clips(data: DataConfig) -> pd.DataFrame:
    """The clips a model with this data config trains on: `data.folds`, less `data.holdout_recordings`."""
    clips = read_clips(data.source, folds=data.folds, hub_split=data.hub_split)
    held = last_recordings(clips, data.holdout_recordings)
    return clips[~held].reset_index(drop=True)


def training_record(data: DataConfig, filenames: list[str]) -> dict:
    """What the model trained on, saved with it: evaluation keeps these clips (by recording) out of its reference."""
    names = [str(name) for name in filenames]
    return {
        "source": source_identity(data.source),
        "folds": list(data.folds),
        "holdout_recordings": data.holdout_recordings,
        "clips": len(names),
        "digest": clip_set_digest(names),
        "filenames": names,
    }


def source_identity(source: str) -> str:
    return os.path.abspath(os.path.expanduser(source)) if is_local_source(source) else source


def select_clips(table: datasets.Dataset, filenames: list[str]) -> datasets.Dataset:
    """The rows of the cached table whose clip is one of `filenames`."""
    wanted = set(filenames)
    selected = table.filter(lambda name: name in wanted, input_columns="filename")
    if len(selected) == 0:
        raise UserError("no cached clips are among the training clips (data.folds, data.holdout_recordings)")
    return selected


class SpectrogramBatches(torch.utils.data.IterableDataset):
    """Shuffled batches of {spectrogram (B, R, R) in [0, 1], target (B,)}: this process's share only.

    Shuffled before it is split so that, with the same seed on every process, the shares are
    disjoint and change from epoch to epoch (`set_epoch` re-seeds the shuffle). Whole batches are
    cut from Arrow and converted at once, about 5x faster than converting rows one at a time and
    collating them (2,000 cached 64x64 clips: 0.14 s against 0.70 s, BENCHMARKS.md), which matters once a
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
