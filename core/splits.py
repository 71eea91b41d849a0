"""Which real clips a model trains on, and which it never hears: splits grouped by recording.

ESC-50 cuts several 5 s clips ("takes" A, B, C...) from one freesound recording (`src_file`). Two
takes of one recording sound alike, so a clip is only "unseen" when no take of its recording was
seen: every split here keeps a recording's takes together. A table without `src_file` (a user's own
collection) treats each file as its own recording.
"""

from __future__ import annotations

import hashlib

import pandas as pd

RECORDING_COLUMN = "src_file"


def recordings(clips: pd.DataFrame) -> pd.Series:
    """The recording each clip was cut from: `src_file` when the table has it, else the file's own name."""
    if RECORDING_COLUMN in clips.columns:
        return clips[RECORDING_COLUMN].astype(str)
    return clips["filename"].astype(str)


def last_recordings(clips: pd.DataFrame, per_class: int, keep: int = 1) -> pd.Series:
    """A mask of the clips of the last `per_class` recordings (by name) of each class, every take included.

    At least `keep` recordings of each class stay outside the mask, so a class with few recordings gives up
    fewer (or none). Deterministic: the same table always gives the same mask.
    """
    selected = pd.Series(False, index=clips.index)
    if per_class <= 0:
        return selected
    recording = recordings(clips)
    for _, group in clips.groupby("target"):
        names = sorted(set(recording[group.index]))
        chosen = set(names[max(keep, len(names) - per_class) :])
        selected[group.index] = recording[group.index].isin(chosen)
    return selected


def sharing_a_recording(clips: pd.DataFrame, others: pd.DataFrame) -> pd.Series:
    """A mask of the clips of `clips` cut from a recording that some clip of `others` was also cut from."""
    return recordings(clips).isin(set(recordings(others)))


def clip_set_digest(filenames: list[str]) -> str:
    """A short identity of a set of clips by name (order does not matter)."""
    return hashlib.sha256("\n".join(sorted(map(str, filenames))).encode()).hexdigest()[:16]
