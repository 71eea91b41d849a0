"""What every stage shares: the result record, repetitions and medians, isolated child processes, scaled-up data."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from core.config import DEFAULT_SOURCE

# Goals of issue 5, as ours / baseline speed.
GOALS = {
    "preprocess": 4.0,
    "preprocess_wav": 4.0,  # the same goal, on the full ESC-50's format
    "preprocess_cached": 50.0,
    "train": 0.9,
    "sample": 2.0,
    "evaluate": 2.0,
    "sweep_overhead": 0.8,
    "sweep_scaling": 1.6,
}


@dataclass
class BenchOptions:
    quick: bool = False
    source: str = DEFAULT_SOURCE
    work_dir: Path = Path(".")
    repeats: int = 3


@dataclass
class StageResult:
    """Speeds (higher is better) of ours and the baseline: medians over `runs_*`."""

    stage: str
    ours: float
    baseline: float
    unit: str
    baseline_name: str
    runs_ours: list[float] = field(default_factory=list)
    runs_baseline: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline > 0 else float("nan")

    @property
    def goal(self) -> float | None:
        return GOALS.get(self.stage)

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return ""
        return "pass" if self.ratio >= self.goal else "miss"

    def to_json(self) -> dict[str, Any]:
        return {
            "ours": self.ours,
            "baseline": self.baseline,
            "unit": self.unit,
            "ratio": self.ratio,
            "goal": self.goal,
            "verdict": self.verdict,
            "baseline_name": self.baseline_name,
            "runs_ours": self.runs_ours,
            "runs_baseline": self.runs_baseline,
            "details": self.details,
        }


def median_result(
    stage: str, unit: str, baseline_name: str, ours: list[float], baseline: list[float], **details: Any
) -> StageResult:
    return StageResult(
        stage, statistics.median(ours), statistics.median(baseline), unit, baseline_name, ours, baseline, details
    )


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(function: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """Run `function` in a fresh spawned interpreter: its peak memory and imports are its own.

    The child's result dict gains `peak_rss_mib`; a failure in the child is raised here.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_measured, function, args, kwargs).result()


def _measured(function: Callable[..., dict], args: tuple, kwargs: dict) -> dict:
    result = function(*args, **kwargs)
    result.setdefault("peak_rss_mib", peak_rss_mib())
    return result


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def scaled_source(source: str, copies: int, dest: Path, as_wav: bool = False, per_class: int = 0) -> str:
    """An ESC-50 folder holding every clip of `source` `copies` times (symlinks under new names).

    Same audio, same folds and classes, `copies` x as many files: the scale-up that stands in for
    the full 2,000-clip ESC-50 where only esc50-mini is at hand. `as_wav` first converts each clip
    to 16-bit WAV at its own rate, the format of the full ESC-50 (esc50-mini is FLAC). `per_class` > 0
    keeps only the first that many clips of each class (`--quick`: proves the stage runs, in less time).
    """
    from core.esc50 import read_clips

    if copies <= 1 and not as_wav and not per_class:
        return source
    clips = read_clips(source)
    if per_class:
        clips = clips.groupby("target", sort=False).head(per_class).reset_index(drop=True)
    audio = dest / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    (dest / "meta").mkdir(exist_ok=True)
    originals = [os.path.abspath(path) for path in clips["path"]]
    if as_wav:
        originals = [_wav_copy(path, dest / "wav") for path in originals]
    rows = []
    for copy in range(copies):
        for row, original in zip(clips.itertuples(), originals):
            name = Path(original).name
            name = f"r{copy}-{name}" if copy else name
            link = audio / name
            if not link.exists():
                os.symlink(original, link)
            rows.append({"filename": name, "fold": row.fold, "target": row.target, "category": row.category})
    pd.DataFrame(rows).to_csv(dest / "meta" / "esc50.csv", index=False)
    return str(dest)


def _wav_copy(path: str, folder: Path) -> str:
    """`path` written once as 16-bit WAV into `folder` (16-bit FLAC: the very same samples)."""
    import soundfile

    from core.audio import write_wav_atomic

    copy = folder / (Path(path).stem + ".wav")
    if not copy.exists():
        samples, rate = soundfile.read(path, dtype="float32")
        write_wav_atomic(copy, samples, rate)
    return str(copy)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
