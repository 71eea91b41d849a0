"""Progress of long work: a bar on a terminal, a log line every so often where there is none.

Under `--no-progress` (logs, `mlflow run`, cluster jobs) a bar is noise, but silence for an hour is
worse: `Progress` then prints one line per `interval` seconds (done/total, rate, ETA, and whatever the
caller adds, e.g. the loss), and a last one when the work ends. (tqdm itself, pointed at a log, redraws one
line with carriage returns at its own pace; a log reader wants whole lines, a few a minute.)
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm

LOG_INTERVAL_ENV = "PROGRESS_LOG_SECONDS"  # how often the line is printed without a bar (default 30 s)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """`with Progress(total, "training", bar=show_progress, unit="step") as progress: progress.update(1, loss=...)`."""

    def __init__(self, total: int, desc: str, bar: bool = True, unit: str = "it", initial: int = 0,
                 enabled: bool = True, interval: float | None = None):  # fmt: skip
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.done = self._start_done = initial
        self.fields: dict[str, str] = {}
        self.interval = float(os.environ.get(LOG_INTERVAL_ENV, 30)) if interval is None else interval
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit) if (bar and enabled) else None
        self._started = self._last_line = time.monotonic()

    def update(self, count: int = 1, **fields: float | str) -> None:
        self.done += count
        self.fields.update({key: f"{value:.4g}" if isinstance(value, float) else str(value)
                            for key, value in fields.items()})  # fmt: skip
        if self._bar is not None:
            self._bar.update(count)
            if fields:
                self._bar.set_postfix(self.fields, refresh=False)
        elif self.enabled and time.monotonic() - self._last_line >= self.interval:
            self.log_line()

    def log_line(self) -> None:
        """`training: 120/1500 steps (8%), loss 0.0412, 9.6 steps/s, 2:24 elapsed, ETA 2:23`."""
        elapsed = time.monotonic() - self._started
        rate = (self.done - self._start_done) / max(elapsed, 1e-9)
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {key} {value}" for key, value in self.fields.items())
        eta = f", ETA {_duration((self.total - self.done) / rate)}" if rate > 0 and self.total else ""
        print(f"{self.desc}: {self.done}/{self.total} {self.unit}s{share}{extra}, {rate:.3g} {self.unit}s/s, "
              f"{_duration(elapsed)} elapsed{eta}", file=sys.stderr, flush=True)  # fmt: skip
        self._last_line = time.monotonic()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.done > self._start_done:
            self.log_line()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
