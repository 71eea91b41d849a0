"""What the registry knows of a metric: its name, which way is better, which table shows it, how it is made."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

STUDY_TABLE = "FAD and CLAP accuracy (the study's metrics)"
SCORER_TABLE = "Offline ESC scorer (not VGGish FAD, not CLAP CA)"
# A metric's role orders the columns of its table and decides where the report puts it.
ROLES = (
    "distance",  # a Frechet distance to the reference (the table's first column; a report column)
    "extrapolated",  # a distance extrapolated to infinitely many clips (tables only)
    "ranking",  # a classification-style score of each clip's own class (a report column)
    "diagnostic",  # not a quality score: e.g. the memorization share (tables and the report's last columns)
)


@dataclass(frozen=True)
class Metric:
    name: str  # as logged to MLflow, written to metrics.json and named by sweep.metric
    header: str  # its column in the results table
    lower_is_better: bool
    group: str  # the --metrics group that computes it: fad | clap | esc
    table: str  # STUDY_TABLE or SCORER_TABLE
    role: str  # one of ROLES
    computed: str  # how, in one line (the report's notes and `python -m evaluation.metrics`)
    compute: Callable | None = None  # the function, where it is one (ranking metrics: from each clip's rank)

    @property
    def mode(self) -> str:
        """Ray Tune's name for the direction of improvement."""
        return "min" if self.lower_is_better else "max"

    @property
    def arrow(self) -> str:
        return "↓" if self.lower_is_better else "↑"
