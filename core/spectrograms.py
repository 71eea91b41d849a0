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
from core.esc50 import (
    DataProblems,
    Problem,
    class_names,
    is_local_source,
    read_clips,
    scan_source,
    unlisted_audio_files,
)
from core.files import write_text_atomic
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


def _compute_chunk(names: list[str], sources: list, settings_json: str) -> tuple[np.ndarray, list[str], list[dict]]:
    """Decode and transform some clips: (spectrograms, error per clip, what decoding fixed per clip); a failed
    clip gets zeros and its error."""
    with _single_threaded():  # the transform's construction runs torch too
        transform = _transform(settings_json)
        settings = transform.settings
        spectrograms = np.zeros((len(names), *settings.shape), np.float32)
        errors = [""] * len(names)
        formats: list[dict] = [{} for _ in names]
        for index, (name, source) in enumerate(zip(names, sources)):
            try:
                samples = decode_audio(source, settings.sample_rate, settings.clip_seconds, name, formats[index])
                spectrograms[index] = transform.spectrogram(samples)
            except BadAudioError as error:  # collected so one scan reports every bad file at once
                errors[index] = str(error)
    return spectrograms, errors, formats


def _compute_packed_chunk(chunk: tuple[list[str], list, str]) -> tuple[np.ndarray, list[str], list[dict]]:
    return _compute_chunk(*chunk)


def compute_spectrograms(
    clips: pd.DataFrame, settings: MelSettings, workers: int, show_progress: bool = True
) -> tuple[np.ndarray, list[str], list[dict]]:
    """Every clip's spectrogram (N, bins, frames), error string ("" when it decoded) and what decoding fixed
    (native rate, channels, seconds), `workers` processes at once.

    A plain process pool over chunks of 32 clips, in order: `datasets.map(num_proc=...)` spent 0.5 s
    more per call on its queue manager process and its shutdown (BENCHMARKS.md).
    """
    names = list(clips["filename"])
    sources = list(clips["path"] if "path" in clips.columns else clips["audio_bytes"])
    settings_json = settings.to_json()
    chunks = [(names[i : i + 32], sources[i : i + 32], settings_json) for i in range(0, len(names), 32)]
    spectrograms, errors, formats = [], [], []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            results = stack.enter_context(context.Pool(workers)).imap(_compute_packed_chunk, chunks)
        else:
            results = map(_compute_packed_chunk, chunks)
        progress = stack.enter_context(
            tqdm(total=len(names), desc="log-mel spectrograms", unit="clip", disable=not show_progress)
        )
        for chunk_spectrograms, chunk_errors, chunk_formats in results:
            spectrograms.append(chunk_spectrograms)
            errors.extend(chunk_errors)
            formats.extend(chunk_formats)
            progress.update(len(chunk_errors))
    return np.concatenate(spectrograms), errors, formats


def format_summary(formats: list[dict], settings: MelSettings) -> str:
    """What decoding fixed, counted: "31 clips resampled from 24 kHz, 12 stereo clips averaged, ..."."""
    from collections import Counter

    rates = Counter(f["rate"] for f in formats if f and f["rate"] != settings.sample_rate)
    stereo = sum(1 for f in formats if f and f["channels"] > 1)
    short = [f["seconds"] for f in formats if f and f["seconds"] < settings.clip_seconds - 1e-3]
    long = [f["seconds"] for f in formats if f and f["seconds"] > settings.clip_seconds + 1e-3]
    parts = [f"{n} clip(s) resampled from {rate / 1000:g} kHz" for rate, n in sorted(rates.items())]
    if stereo:
        parts.append(f"{stereo} multi-channel clip(s) averaged to mono")
    if short:
        parts.append(f"{len(short)} clip(s) padded with silence (shortest {min(short):.2f} s)")
    if long:
        parts.append(f"{len(long)} clip(s) trimmed (longest {max(long):.2f} s) to {settings.clip_seconds:g} s")
    return ", ".join(parts)


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


SKIPPED_FILE = "skipped.json"  # in a cache folder: the rows data.skip_bad left out of it, and why


def build_spectrogram_cache(data: DataConfig, show_progress: bool = True) -> datasets.Dataset:
    """Every clip of `data.source` (all folds) as a cached table: filename, fold, target, category, spectrogram.

    One scan finds every problem of the collection, the metadata's (`core.esc50.scan_table`, absent files)
    and every unreadable clip's: together they stop the run (`DataProblems`, all of them named, the full list
    also written beside the cache when long) and nothing is cached; with `data.skip_bad` their rows are left
    out and listed in the cache's `skipped.json` (`skipped_rows`).
    """
    datasets.disable_caching()  # our own key decides reuse; datasets' fingerprint cache would double the disk
    rows, problems, _ = scan_source(data.source, data.hub_split)
    bad_lines = {p.line for p in problems}
    clips = rows[~rows["line"].isin(bad_lines)].sort_values("filename").reset_index(drop=True)
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
        # A cache made with skip_bad lacks its unreadable clips: without skip_bad they are problems again.
        problems = sorted(problems + _recorded_unreadable(cache_dir), key=lambda p: p.line)
        if problems and not _skippable(problems, data):
            raise DataProblems(data.source, problems, _listing(problems, data))
        return datasets.load_from_disk(str(cache_dir))

    workers = data.preprocess_workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(clips) // 16))  # process start-up costs more than tiny sets gain
    spectrograms, errors, formats = compute_spectrograms(clips, settings, workers, show_progress)
    bad_audio = [Problem(int(line), name, error, unreadable=True)
                 for line, name, error in zip(clips["line"], clips["filename"], errors) if error]  # fmt: skip
    problems = sorted(problems + bad_audio, key=lambda p: p.line)
    if problems and not _skippable(problems, data):
        raise DataProblems(data.source, problems, _listing(problems, data))
    summary = format_summary(formats, settings)
    if summary:
        log.warning("%s: %s", data.source, summary)
    if bad_audio:  # still under the key of the rows read: the next run with skip_bad finds it
        good = np.array([not error for error in errors])
        clips, spectrograms = clips[good].reset_index(drop=True), spectrograms[good]
    if problems:
        log.warning("data.skip_bad: %d row(s) of %s left out: %s", len(problems), data.source,
                    "; ".join(str(p) for p in problems[:5]))  # fmt: skip
    if not show_progress:
        datasets.disable_progress_bars()
    _save_atomically(_as_table(clips, spectrograms, key), cache_dir, problems)
    return datasets.load_from_disk(str(cache_dir))


def skipped_rows(table: datasets.Dataset) -> list[dict]:
    """The rows `data.skip_bad` left out of a cached set (line, file, problem), from its cache folder; [] if none."""
    files = table.cache_files
    record = Path(files[0]["filename"]).parent / SKIPPED_FILE if files else None
    return json.loads(record.read_text())["rows"] if record is not None and record.is_file() else []


def _recorded_unreadable(cache_dir: Path) -> list[Problem]:
    record = cache_dir / SKIPPED_FILE
    if not record.is_file():
        return []
    rows = json.loads(record.read_text())["rows"]
    return [Problem(r["line"], r["file"], r["problem"], unreadable=True) for r in rows if r.get("unreadable")]


def _skippable(problems: list[Problem], data: DataConfig) -> bool:
    """data.skip_bad leaves rows out; a problem of no row (a gap in the targets) cannot be skipped."""
    return data.skip_bad and all(p.line for p in problems)


def _listing(problems: list[Problem], data: DataConfig) -> str:
    """Long lists also go to a file (the message shows the first ones): its path, or ''."""
    if len(problems) <= 8:
        return ""
    folder = Path(data.cache_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{p}\n" for p in problems)
    return str(write_text_atomic(folder / f"problems-{hashlib.sha256(text.encode()).hexdigest()[:12]}.txt", text))


def _save_atomically(table: datasets.Dataset, cache_dir: Path, skipped: list[Problem] | None = None) -> None:
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.", dir=cache_dir.parent))
    try:
        table.save_to_disk(str(staging))
        if skipped:
            rows = [{"line": p.line, "file": p.file, "problem": p.message, "unreadable": p.unreadable} for p in skipped]
            (staging / SKIPPED_FILE).write_text(json.dumps({"rows": rows}, indent=2))
        try:
            os.replace(staging, cache_dir)
        except OSError:  # another process finished first: its copy is as good as ours
            if not (cache_dir / "dataset_info.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def training_clips(data: DataConfig) -> pd.DataFrame:
    """The clips a model with this data config trains on: `data.folds`, less `data.holdout_recordings`."""
    clips = read_clips(data.source, folds=data.folds, hub_split=data.hub_split, skip_bad=data.skip_bad)
    held = last_recordings(clips, data.holdout_recordings)
    return clips[~held].reset_index(drop=True)


def data_classes(data: DataConfig) -> list[str]:
    """The class set of `data.source` (every fold): ESC-50's 50 names, or the collection's own by target."""
    return class_names(read_clips(data.source, hub_split=data.hub_split, skip_bad=data.skip_bad))


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
        self.table = table  # the clips streamed (the training figure shows one of each class)

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id > 0:
            return  # the table is one shard: one loader worker reads it, as datasets itself would
        yield from self.stream.iter(batch_size=self.batch_size, drop_last_batch=True)
