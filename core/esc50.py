"""ESC-50 metadata: where the clips are and what they are, from a folder or the Hugging Face hub.

A source is either a folder in ESC-50's layout (`meta/esc50.csv` + `audio/`) or a hub dataset id
with ESC-50's columns (e.g. `ashraq/esc50`). Both become the same table: one row per clip with
`filename, fold, target, category` and where to read the audio (`path` or `audio_bytes`).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


SKIPPED_ATTR = "skipped"  # table.attrs[...]: the problems whose rows data.skip_bad left out


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a collection: where (CSV line, 1 = the header; 0 = not a row) and what."""

    line: int
    file: str
    message: str
    unreadable: bool = False  # found decoding the clip, not reading the metadata

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class DataProblems(UserError):
    """Every problem a scan found, in one message (the first ones inline; all of them in `problems`)."""

    def __init__(self, where: str, problems: list[Problem], listing: str = ""):
        self.where, self.problems = where, problems
        kind = "bad audio file(s)" if all(p.unreadable for p in problems) else "problem(s)"
        shown = "; ".join(str(p) for p in problems[:8]) + (
            f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        )
        full = f" (all of them in {listing})" if listing else ""
        advice = (
            "Fix them, or set data.skip_bad=true to leave those rows out"
            if all(p.line for p in problems)
            else "Fix them (a problem of no single row, such as a gap in the targets, cannot be skipped)"
        )
        super().__init__(f"{len(problems)} {kind} in {where}{full}: {shown}. {advice}")


def read_clips(
    source: str, folds: list[int] | tuple[int, ...] = (), hub_split: str = "train", skip_bad: bool = False
) -> pd.DataFrame:
    """The clips of `source` (every fold when `folds` is empty), validated, sorted by filename.

    `source` is an ESC-50 folder, a hub dataset id, or a local folder holding a hub-format
    dataset (parquet files with ESC-50's columns and an `audio` column), which `datasets` reads.
    Every problem of the metadata is found in one scan (`scan_table`): they stop the read with one
    `DataProblems` naming all of them, or with `skip_bad` their rows are left out (listed in
    `table.attrs["skipped"]`).
    """
    table, problems, where = scan_source(source, hub_split)
    table = _settle(table, problems, where, skip_bad)
    if folds:
        table = table[table["fold"].isin(list(folds))]
        if table.empty:
            raise UserError(f"no clips of {source} are in folds {list(folds)} (data.folds)")
    skipped = table.attrs.get(SKIPPED_ATTR, [])
    table = table.sort_values("filename").reset_index(drop=True)
    table.attrs[SKIPPED_ATTR] = skipped
    return table


def scan_source(source: str, hub_split: str = "train") -> tuple[pd.DataFrame, list[Problem], str]:
    """Every row of `source` (with its CSV `line`), every problem of its metadata, and what to call it."""
    path = Path(source).expanduser()
    if is_esc50_folder(source):
        return _read_folder(source)
    if path.is_dir():
        return _read_hub(str(path), hub_split)
    if is_local_source(source):
        raise UserError(f"data source {source} not found (expected ESC-50's layout: audio/ + meta/esc50.csv)")
    return _read_hub(source, hub_split)


def _settle(table: pd.DataFrame, problems: list[Problem], where: str, skip_bad: bool) -> pd.DataFrame:
    """Raise every problem at once, or leave their rows out (`skip_bad`)."""
    # Rows can be left out; a problem of no row (a gap in the targets: which rows are wrong is unknowable) cannot.
    if problems and (not skip_bad or any(not p.line for p in problems)):
        raise DataProblems(where, problems)
    bad_lines = {p.line for p in problems if p.line}
    kept = table[~table["line"].isin(bad_lines)].copy()
    if kept.empty:
        raise DataProblems(where, problems or [Problem(0, "", "no usable clips")])
    kept.attrs[SKIPPED_ATTR] = problems
    return kept


def _read_folder(source: str) -> tuple[pd.DataFrame, list[Problem], str]:
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
    table, problems = scan_table(table, str(csv_path))
    audio_dir = root / "audio"
    table["path"] = [str(audio_dir / str(name)) for name in table["filename"]]
    present = {p.name for p in audio_dir.iterdir()} if audio_dir.is_dir() else set()
    absent = [(line, str(name)) for line, name, path in zip(table["line"], table["filename"], table["path"])
              if str(name) not in present and not os.path.lexists(path)]  # fmt: skip
    # (a directory, FIFO or symlink loop under the name is present: decoding names what it is)
    unlisted = sorted(
        set(n for n in present if Path(n).suffix.lower() in AUDIO_SUFFIXES) - set(map(str, table["filename"]))
    )
    for line, name in absent:
        near = difflib.get_close_matches(name, unlisted, n=1, cutoff=0.8)
        hint = f" (did you mean {near[0]}?)" if near else ""
        problems.append(Problem(line, name, f"{name} is listed but missing from {audio_dir}{hint}"))
    return table, sorted(problems, key=lambda p: p.line), str(csv_path)


def unlisted_audio_files(source: str) -> list[str]:
    """Audio files present in the folder but absent from the CSV: ignored, but worth a warning."""
    root = Path(source).expanduser()
    listed = set(pd.read_csv(root / "meta" / "esc50.csv")["filename"].astype(str))
    return sorted(
        p.name for p in (root / "audio").iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.name not in listed
    )


def _read_hub(source: str, split: str) -> tuple[pd.DataFrame, list[Problem], str]:
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
    where = f"hub dataset '{source}'"
    table, problems = scan_table(dataset.remove_columns("audio").to_pandas(), where)
    table["audio_bytes"] = [item["bytes"] for item in dataset["audio"]]
    return table, problems, where


def is_esc50_classes(targets: pd.Series, categories: pd.Series) -> bool:
    """ESC-50 itself (its names at its targets, for at least half the rows, so a typo is an error, not a new
    class set), as opposed to a collection with its own classes in ESC-50's layout."""
    agree = [0 <= t < NUM_CLASSES and ESC50_CATEGORIES[t] == c for t, c in zip(targets, categories)]
    return sum(agree) * 2 >= len(agree)


def scan_table(table: pd.DataFrame, where: str) -> tuple[pd.DataFrame, list[Problem]]:
    """Every row-level problem of a metadata table at once; the table gets a `line` column (its CSV line).

    A missing column or an empty table stops at once (nothing else can be checked). For ESC-50 itself
    (`is_esc50_classes`) a target must carry ESC-50's name; another class set must have targets 0..K-1,
    each with one name and each name with one target.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{where} lacks required column(s) {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})")
    if table.empty:
        raise UserError(f"{where} lists no clips")
    table = table.copy()
    table["line"] = np.arange(2, len(table) + 2)
    problems: list[Problem] = []
    empty = table["filename"].isna() | (table["filename"].astype(str).str.strip() == "")
    for line in table["line"][empty]:
        problems.append(Problem(line, "", "column 'filename' is empty"))
    for column in ("fold", "target"):
        numeric = pd.to_numeric(table[column], errors="coerce")
        # Beyond 2**31 is no class or fold (99999999999999999999 would wrap around to a negative int64).
        bad = numeric.isna() | (numeric != numeric.round()) | (numeric.abs() >= 2**31)
        for line, name, value in zip(table["line"][bad], table["filename"][bad], table[column][bad]):
            problems.append(Problem(line, str(name), f"column '{column}' is not an integer for {name} ({value!r})"))
        table[column] = numeric.where(~bad, -1).astype(int)
        for line, name, value in zip(table["line"][~bad & (numeric < 0)], table["filename"][~bad & (numeric < 0)],
                                     numeric[~bad & (numeric < 0)]):  # fmt: skip
            problems.append(Problem(line, str(name), f"column '{column}' is negative for {name} ({int(value)})"))
    table["filename"] = table["filename"].where(~empty, "").astype(str)
    table["category"] = table["category"].astype(str)
    named = table[~empty]
    for filename, group in named[named["filename"].duplicated(keep=False)].groupby("filename"):
        for line in group["line"].iloc[1:]:
            problems.append(
                Problem(line, filename, f"{filename} is listed more than once (first on line {group['line'].iloc[0]})")
            )
    valid = table[table["target"] >= 0]
    if is_esc50_classes(valid["target"], valid["category"]):
        problems += _esc50_problems(valid)
    else:
        problems += _class_set_problems(valid)
    return table, problems


ESC50_FOLDS = range(1, 6)


def _esc50_problems(table: pd.DataFrame) -> list[Problem]:
    problems = [Problem(line, name, f"fold {fold} of {name} is not one of ESC-50's folds 1..5")
                for line, name, fold in zip(table["line"], table["filename"], table["fold"])
                if fold >= 0 and fold not in ESC50_FOLDS]  # fmt: skip
    for line, name, target, category in zip(table["line"], table["filename"], table["target"], table["category"]):
        if not 0 <= target < NUM_CLASSES:
            problems.append(Problem(line, name, f"class target {target} of {name} is outside 0..{NUM_CLASSES - 1}"))
        elif ESC50_CATEGORIES[target] != category:
            problems.append(
                Problem(
                    line,
                    name,
                    f"unknown class '{category}' for target {target} of {name} (ESC-50 calls "
                    f"target {target} '{ESC50_CATEGORIES[target]}')",
                )  # fmt: skip
            )
    return problems


def _class_set_problems(table: pd.DataFrame) -> list[Problem]:
    """A collection's own classes: each target one name, each name one target, targets 0..K-1."""
    problems = []
    for key, other, what in (("target", "category", "target"), ("category", "target", "class")):
        for value, group in table.groupby(key):
            counts = group[other].value_counts()
            if len(counts) > 1:
                usual = counts.index[0]
                for line, name, found in zip(group["line"], group["filename"], group[other]):
                    if found != usual:
                        problems.append(Problem(line, name, f"{what} {value!r} of {name} is {found!r} here but "
                                                            f"{usual!r} on {counts.iloc[0]} other row(s)"))  # fmt: skip
    targets = set(table["target"])
    gaps = sorted(set(range(max(targets) + 1)) - targets) if targets else []
    if gaps:
        problems.append(Problem(0, "", f"class targets must be 0..{max(targets)} without gaps: none is {gaps[:10]}"))
    return problems


# Class names become folder names of generated clips (OUT/<class>/<n>.wav): none may leave the folder.
_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]|^\.|^$")


def unsafe_class_name(name: object) -> bool:
    """A class name no file may carry: not a string, a separator, a leading dot, control characters, > 200 long."""
    return not isinstance(name, str) or len(name) > 200 or bool(_UNSAFE_NAME.search(name)) or name in ("..", ".")


def class_names(table: pd.DataFrame) -> list[str]:
    """The class set of a (scanned) clip table, by target: ESC-50's 50 names, or the collection's own."""
    if is_esc50_classes(table["target"], table["category"]):
        return list(ESC50_CATEGORIES)
    names = table.drop_duplicates("target").set_index("target")["category"]
    empty = [t for t in range(int(table["target"].max()) + 1) if t not in names.index]
    if empty:  # data.skip_bad left out every row of a class: the class set would have a hole
        raise UserError(f"class target {empty[0]} has no usable clips left (data.skip_bad left all of them out)")
    return [str(names[t]) for t in range(int(table["target"].max()) + 1)]
