"""The clips being scored: a generated folder's manifest, and decoding at equal length and treatment.

Every clip table here has the columns `filename, target, category, source` (`source` = a path or the
audio bytes of a hub dataset). Decoding never drops a clip: any unreadable file stops the scoring with
an error naming every such file, so a score always covers the whole listed set.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from core.audio import BadAudioError, decode_audio, fix_length
from core.errors import UserError
from core.esc50 import ESC50_CATEGORIES
from evaluation.protocol import Preprocessing

MANIFEST = "manifest.csv"
CLIP_SECONDS = 5.0  # every clip is compared at ESC-50's length


def generated_classes(folder: Path) -> list[str]:
    """The generator's class set, from its generation.json; ESC-50's for clips made without one."""
    import json

    try:
        categories = json.loads((folder / "generation.json").read_text()).get("categories")
    except (OSError, ValueError, AttributeError):
        categories = None
    return list(categories) if isinstance(categories, list) and categories else list(ESC50_CATEGORIES)


def read_manifest(generated_dir: str | os.PathLike) -> pd.DataFrame:
    """The clips listed in `generated_dir/manifest.csv` (`file,target,category`, files relative to the folder),
    checked against the generator's class set (generation.json; ESC-50's when it names none)."""
    folder = Path(generated_dir)
    categories = generated_classes(folder)
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
    bad = table[targets.isna() | (targets < 0) | (targets >= len(categories)) | (targets != targets.round())]
    if not bad.empty:
        row = bad.iloc[0]
        raise UserError(
            f"{manifest}: target '{row['target']}' of {row['file']} is not a class id 0..{len(categories) - 1}"
        )
    table["target"] = targets.astype(int)
    wrong = table[[categories[t] != c for t, c in zip(table["target"], table["category"])]]
    if not wrong.empty:
        row = wrong.iloc[0]
        raise UserError(
            f"{manifest}: category '{row['category']}' of {row['file']} does not match target {row['target']}"
            f" ('{categories[row['target']]}')"
        )
    # Every clip must be a file inside the folder (resolved, symlinks followed): a manifest naming /etc/passwd, or
    # real clips elsewhere passed off as generated (which would then beat the ceiling), is refused.
    root = folder.resolve()

    def inside(name: str) -> bool:
        try:
            return (folder / name).resolve().is_relative_to(root)
        except (OSError, RuntimeError):  # a symlink loop: not a clip
            return False

    outside = [str(name) for name in table["file"] if not inside(str(name))]
    if outside:
        raise UserError(f"{manifest}: {outside[0]} is not inside {folder} (every listed clip must be)")
    table["source"] = [str(folder / name) for name in table["file"]]
    absent = [name for name, path in zip(table["file"], table["source"]) if not os.path.isfile(path)]
    if absent:
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise UserError(f"{len(absent)} clip(s) listed in {manifest} are missing: {shown}")
    table = table.rename(columns={"file": "filename"})
    return table[["filename", "target", "category", "source"]].reset_index(drop=True)


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


def decoded_batches(
    clips: pd.DataFrame,
    sample_rate: int,
    batch_size: int = 32,
    seconds: float = CLIP_SECONDS,
    desc: str = "decoding",
    show_progress: bool = True,
    preprocessing: Preprocessing | None = None,
) -> Iterator[np.ndarray]:
    """Batches (B, seconds * sample_rate) of mono float32 clips, in table order.

    With `preprocessing`, every clip is decoded at its rate (limiting the bandwidth), scaled to its peak,
    then resampled to `sample_rate`: real and generated clips reach a metric treated alike.

    After the first unreadable clip nothing more is yielded, but every remaining clip is still tried
    so that the error names all of them; the error is raised once the table is exhausted.
    """
    failures: list[str] = []
    batch: list[np.ndarray] = []
    for name, source in tqdm(
        zip(clips["filename"], clips["source"]), total=len(clips), desc=desc, disable=not show_progress, leave=False
    ):
        try:
            samples = _decode(source, sample_rate, seconds, str(name), preprocessing)
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


def _decode(source, sample_rate: int, seconds: float, name: str, preprocessing: Preprocessing | None) -> np.ndarray:
    if preprocessing is None:
        return decode_audio(source, sample_rate, seconds, name=name)
    samples = decode_audio(source, preprocessing.sample_rate, seconds, name=name)
    if preprocessing.peak:
        peak = float(np.abs(samples).max())
        if peak == 0.0:  # decode_audio rejects silent files; this one is silent in the part that is scored
            raise BadAudioError(f"audio file {name} is silent in its first {seconds:g} s")
        samples = samples * np.float32(preprocessing.peak / peak)
    if preprocessing.sample_rate != sample_rate:
        import soxr

        samples = soxr.resample(samples, preprocessing.sample_rate, sample_rate, quality="HQ").astype(np.float32)
    return fix_length(samples, round(sample_rate * seconds))
