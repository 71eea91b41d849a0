"""Real clips through a model's representation and back: mel spectrogram -> Griffin-Lim -> audio.

Scored like generated clips, they are the **representation ceiling**: what a generator that produced
perfect spectrograms of unseen real clips would score after inversion. The gap between it and the real
ceiling is the vocoder's and the representation's (mel 64 -> Griffin-Lim 32 on esc50-mini costs about
a fifth of the scorer's top-1); the gap between it and the model's row is the model's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from core.audio import MelSettings, MelTransform, write_wav_atomic
from evaluation.clips import decoded_batches, fingerprint

TABLE = "clips.csv"  # written last: a folder with it is complete


def cached_round_trip(
    clips: pd.DataFrame,
    mel: MelSettings,
    griffin_lim_iters: int,
    cache_dir: str | os.PathLike,
    seed: int = 0,
    show_progress: bool = True,
) -> pd.DataFrame:
    """`round_trip_clips` under `cache_dir/representation/<key>`: made once per (clips, mel settings, inversion),
    so every trial of a sweep scoring the same ceiling through the same representation shares it."""
    payload = [fingerprint(clips), mel.to_json(), griffin_lim_iters, seed]
    key = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "representation" / key
    if (folder / TABLE).is_file():
        table = pd.read_csv(folder / TABLE)
        return table.assign(source=[str(folder / name) for name in table["filename"]])
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder.parent))
    try:
        table = round_trip_clips(clips, mel, griffin_lim_iters, staging, seed, show_progress)
        table.drop(columns="source").to_csv(staging / TABLE, index=False)
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished first: its copy is as good as ours
            if not (folder / TABLE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return table.assign(source=[str(folder / name) for name in table["filename"]])


def round_trip_clips(
    clips: pd.DataFrame,
    mel: MelSettings,
    griffin_lim_iters: int,
    folder: str | os.PathLike,
    seed: int = 0,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Write each clip of `clips` after mel -> Griffin-Lim into `folder`; the written clips as a clip table.

    Real clips enter as generation's training data did: decoded at the model's rate, at their own level.
    """
    folder = Path(folder)
    transform = MelTransform(mel)
    rows = []
    batches = decoded_batches(clips, mel.sample_rate, 32, mel.clip_seconds, "representation round trip", show_progress)
    index = 0
    for batch in batches:
        spectrograms = np.stack([transform.spectrogram(clip) for clip in batch])
        audio = transform.audio(spectrograms, iterations=griffin_lim_iters, seed=seed)
        for clip in audio:
            row = clips.iloc[index]
            path = folder / f"{index:05d}_{Path(str(row['filename'])).stem}.wav"
            write_wav_atomic(path, clip, mel.sample_rate)
            rows.append({"filename": path.name, "target": int(row["target"]), "category": row["category"],
                         "source": str(path)})  # fmt: skip
            index += 1
    return pd.DataFrame(rows, columns=["filename", "target", "category", "source"])
