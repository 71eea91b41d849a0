"""ESC-50 metadata: where the clips are and what they are, from a folder or the Hugging Face hub.

A source is either a folder in ESC-50's layout (`meta/esc50.csv` + `audio/`) or a hub dataset id
with ESC-50's columns (e.g. `ashraq/esc50`). Both become the same table: one row per clip with
`filename, fold, target, category` and where to read the audio (`path` or `audio_bytes`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from core.errors import UserError

ESC50_CATEGORIES: tuple[str, ...] = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm", "crying_baby", "sneezing", "clapping",
    "breathing", "coughing", "footsteps", "laughing", "brushing_teeth", "snoring",
    "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks",
    "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train",
    "church_bells", "airplane", "fireworks", "hand_saw",
)  # fmt: skip
NUM_CLASSES = len(ESC50_CATEGORIES)
REQUIRED_COLUMNS = ("filename", "fold", "target", "category")
AUDIO_SUFFIXES = {".wav", ".flac"}


def is_local_source(source: str) -> bool:
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~"))


def is_esc50_folder(source: str) -> bool:
    return (Path(source).expanduser() / "meta" / "esc50.csv").is_file()


def read_clips(source: str, folds: list[int] | tuple[int, ...] = (), hub_split: str = "train") -> pd.DataFrame:
    """The clips of `source` (every fold when `folds` is empty), validated, sorted by filename.

    `source` is an ESC-50 folder, a hub dataset id, or a local folder holding a hub-format
    dataset (parquet files with ESC-50's columns and an `audio` column), which `datasets` reads.
    """
    path = Path(source).expanduser()
    if is_esc50_folder(source):
        table = _read_folder(source)
    elif path.is_dir():
        table = _read_hub(str(path), hub_split)
    elif is_local_source(source):
        raise UserError(f"data source {source} not found (expected ESC-50's layout: audio/ + meta/esc50.csv)")
    else:
        table = _read_hub(source, hub_split)
    if folds:
        table = table[table["fold"].isin(list(folds))]
        if table.empty:
            raise UserError(f"no clips of {source} are in folds {list(folds)} (data.folds)")
    return table.sort_values("filename").reset_index(drop=True)


def _read_folder(source: str) -> pd.DataFrame:
    root = Path(source).expanduser()
    csv_path = root / "meta" / "esc50.csv"
    if not root.is_dir():
        raise UserError(f"data source {source} is not a folder (expected ESC-50's layout: audio/ + meta/esc50.csv)")
    if not csv_path.is_file():
        raise UserError(f"metadata file {csv_path} not found (expected ESC-50's layout: audio/ + meta/esc50.csv)")
    try:
        table = pd.read_csv(csv_path)
    except Exception as error:
        raise UserError(f"cannot read metadata file {csv_path}: {' '.join(str(error).split())}") from None
    table = _validate_table(table, str(csv_path))
    audio_dir = root / "audio"
    table["path"] = [str(audio_dir / name) for name in table["filename"]]
    missing = [name for name, path in zip(table["filename"], table["path"]) if not os.path.isfile(path)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} file(s) listed in {csv_path} are missing from {audio_dir}: {shown}")
    return table


def unlisted_audio_files(source: str) -> list[str]:
    """Audio files present in the folder but absent from the CSV: ignored, but worth a warning."""
    root = Path(source).expanduser()
    listed = set(pd.read_csv(root / "meta" / "esc50.csv")["filename"])
    return sorted(
        p.name for p in (root / "audio").iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.name not in listed
    )


def _read_hub(source: str, split: str) -> pd.DataFrame:
    import datasets

    try:
        dataset = datasets.load_dataset(source, split=split)
    except Exception as error:
        reason = " ".join(str(error).split())[:300]
        if Path(source).is_dir():
            raise UserError(
                f"data source {source} is neither an ESC-50 folder (no meta/esc50.csv) nor a dataset folder "
                f"that datasets can read: {reason}"
            ) from None
        raise UserError(
            f"cannot load hub dataset '{source}' (split '{split}'): {reason}. Offline, download ESC-50 "
            "(github.com/karolpiczak/ESC-50) and set data.source to its folder, or pre-fill the HF datasets cache"
        ) from None
    if "audio" not in dataset.column_names:
        raise UserError(f"hub dataset '{source}' has no 'audio' column (columns: {dataset.column_names})")
    # datasets 5.x decodes Audio columns with torchcodec; we read the raw bytes and decode with soundfile.
    dataset = dataset.cast_column("audio", datasets.Audio(decode=False))
    table = _validate_table(dataset.remove_columns("audio").to_pandas(), f"hub dataset '{source}'")
    table["audio_bytes"] = [item["bytes"] for item in dataset["audio"]]
    return table


def _validate_table(table: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{where} lacks required column(s) {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})")
    if table.empty:
        raise UserError(f"{where} lists no clips")
    for column in ("fold", "target"):
        numeric = pd.to_numeric(table[column], errors="coerce")
        bad = table.loc[numeric.isna() | (numeric != numeric.round()), "filename"].tolist()
        if bad:
            raise UserError(f"{where}: column '{column}' is not an integer for {bad[0]}")
        table[column] = numeric.astype(int)
    out_of_range = table[(table["target"] < 0) | (table["target"] >= NUM_CLASSES)]
    if not out_of_range.empty:
        row = out_of_range.iloc[0]
        raise UserError(f"{where}: class target {row['target']} of {row['filename']} is outside 0..{NUM_CLASSES - 1}")
    mismatched = table[[ESC50_CATEGORIES[t] != c for t, c in zip(table["target"], table["category"])]]
    if not mismatched.empty:
        row = mismatched.iloc[0]
        raise UserError(
            f"{where}: unknown class '{row['category']}' for target {row['target']} of {row['filename']}"
            f" (ESC-50 calls target {row['target']} '{ESC50_CATEGORIES[row['target']]}')"
        )
    duplicated = table[table["filename"].duplicated()]["filename"].tolist()
    if duplicated:
        raise UserError(f"{where}: {duplicated[0]} is listed more than once")
    return table
