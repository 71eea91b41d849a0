"""The clips being scored: a generated folder's manifest, the reference split, and decoding at equal length.

Every clip table here has the columns `filename, target, category, source` (`source` = a path or the
audio bytes of a hub dataset). Decoding never drops a clip: any unreadable file stops the scoring with
an error naming every such file, so a score always covers the whole listed set.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from core.audio import BadAudioError, decode_audio
from core.errors import UserError
from core.esc50 import ESC50_CATEGORIES, is_local_source, read_clips

MANIFEST = "manifest.csv"
CLIP_SECONDS = 5.0  # every clip is compared at ESC-50's length


def read_manifest(generated_dir: str | os.PathLike) -> pd.DataFrame:
    """The clips listed in `generated_dir/manifest.csv` (`file,target,category`, files relative to the folder)."""
    folder = Path(generated_dir)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise UserError(f"{manifest} not found: --generated needs a folder with manifest.csv (file,target,category)")
    try:
        table = pd.read_csv(manifest)
    except Exception as error:
        raise UserError(f"cannot read {manifest}: {' '.join(str(error).split())}") from None
    missing = [c for c in ("file", "target", "category") if c not in table.columns]
    if missing:
        raise UserError(f"{manifest} lacks column(s) {', '.join(missing)} (needs file,target,category)")
    if table.empty:
        raise UserError(f"{manifest} lists no clips")
    targets = pd.to_numeric(table["target"], errors="coerce")
    bad = table[targets.isna() | (targets < 0) | (targets >= len(ESC50_CATEGORIES)) | (targets != targets.round())]
    if not bad.empty:
        row = bad.iloc[0]
        raise UserError(f"{manifest}: target '{row['target']}' of {row['file']} is not a class id 0..49")
    table["target"] = targets.astype(int)
    wrong = table[[ESC50_CATEGORIES[t] != c for t, c in zip(table["target"], table["category"])]]
    if not wrong.empty:
        row = wrong.iloc[0]
        raise UserError(
            f"{manifest}: category '{row['category']}' of {row['file']} does not match target {row['target']}"
            f" ('{ESC50_CATEGORIES[row['target']]}')"
        )
    table["source"] = [str(folder / name) for name in table["file"]]
    absent = [name for name, path in zip(table["file"], table["source"]) if not os.path.isfile(path)]
    if absent:
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise UserError(f"{len(absent)} clip(s) listed in {manifest} are missing: {shown}")
    table = table.rename(columns={"file": "filename"})
    return table[["filename", "target", "category", "source"]].reset_index(drop=True)


@dataclass
class ReferenceSplit:
    """Real clips: `reference` is what every row is compared with (and what the offline scorer trains on);
    `held_out` are real clips outside it, scored like generated ones to give the "real data" row."""

    source: str
    reference: pd.DataFrame
    held_out: pd.DataFrame
    how: str  # how `held_out` was chosen, for the logs and the report


def split_reference(source: str, folds: list[int] | tuple[int, ...] = (), hub_split: str = "train") -> ReferenceSplit:
    """Reference = the clips of `folds` (every fold when empty); held out = the other folds.

    When the other folds do not hold a clip of every reference class (no folds given, or a small set
    such as esc50-mini whose clips are nearly all fold 4), the last clip (by file name) of each class
    is held out of the reference instead: deterministic, and every class keeps the rest of its clips.
    """
    clips = _as_clip_table(read_clips(source, hub_split=hub_split))
    folds = sorted({int(f) for f in folds})
    reference = clips[clips["fold"].isin(folds)] if folds else clips
    if reference.empty:
        raise UserError(f"no clips of {source} are in folds {folds} (--reference-folds)")
    others = clips[~clips["fold"].isin(folds)] if folds else clips.iloc[0:0]
    if not others.empty and set(reference["target"]) <= set(others["target"]):
        return ReferenceSplit(source, reference.reset_index(drop=True), others.reset_index(drop=True), "other folds")
    held = reference.sort_values("filename").groupby("target").tail(1)
    if len(held) == len(reference):
        raise UserError(f"{source} has one clip per class in folds {folds or 'all'}: nothing left to hold out")
    reference = reference.drop(index=held.index)
    how = "last clip of each class"
    return ReferenceSplit(source, reference.reset_index(drop=True), held.reset_index(drop=True), how)


def _as_clip_table(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    table["source"] = table["path"] if "path" in table.columns else table["audio_bytes"]
    return table[["filename", "fold", "target", "category", "source"]]


def fingerprint(clips: pd.DataFrame) -> str:
    """Identity of a clip set: names, labels and each file's size and modification time (or bytes)."""
    digest = hashlib.sha256()
    for name, target, source in zip(clips["filename"], clips["target"], clips["source"]):
        digest.update(f"{name}|{target}|".encode())
        if isinstance(source, bytes):
            digest.update(hashlib.sha256(source).digest())
        else:
            stat = os.stat(source)
            digest.update(f"{os.path.abspath(source)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def source_identity(source: str) -> str:
    return os.path.abspath(os.path.expanduser(source)) if is_local_source(source) else source


def decoded_batches(
    clips: pd.DataFrame,
    sample_rate: int,
    batch_size: int = 32,
    seconds: float = CLIP_SECONDS,
    desc: str = "decoding",
    show_progress: bool = True,
) -> Iterator[np.ndarray]:
    """Batches (B, seconds * sample_rate) of mono float32 clips, in table order.

    After the first unreadable clip nothing more is yielded, but every remaining clip is still tried
    so that the error names all of them; the error is raised once the table is exhausted.
    """
    failures: list[str] = []
    batch: list[np.ndarray] = []
    for name, source in tqdm(
        zip(clips["filename"], clips["source"]), total=len(clips), desc=desc, disable=not show_progress, leave=False
    ):
        try:
            samples = decode_audio(source, sample_rate, seconds, name=str(name))
        except BadAudioError as error:
            failures.append(str(error))
            continue
        if failures:
            continue
        batch.append(samples)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if failures:
        shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
        raise UserError(f"{len(failures)} of {len(clips)} clips could not be read (not scoring a partial set): {shown}")
    if batch:
        yield np.stack(batch)
