"""The results table in the study's format, per-class results and a confusion matrix, as files.

Two tables, kept apart so nobody mistakes one for the other: the study's (`Fad score | CA Top 1 |
CA Top 5 | CA Top10 | CA mAP10`, from the FAD package and CLAP) and the offline scorer's (`fd_esc`,
`esc_top1`, ...). Each row is one set of clips: the real held-out clips, the same clips through the
generator's representation (mel + Griffin-Lim), then the generated ones. Each value carries its 95%
bootstrap interval when one was computed; the protocol (`evaluation.protocol`) is printed above them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.esc50 import ESC50_CATEGORIES
from core.files import write_text_atomic
from core.plots import save_figure
from evaluation.metrics import SCORER_TABLE, STUDY_TABLE, confusion_matrix, table_metrics


def tables(rows: dict[str, dict[str, float]]) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) pairs: the study's table when FAD or CLAP was computed, the scorer's when it was.

    The columns are the registry's (evaluation.metrics) for each table, in its order; one header may stand
    for several metrics (`Fad score` for every FAD embedding model): the first present fills it.
    """
    present = {name for metrics in rows.values() for name in metrics}
    result = []
    for title in (STUDY_TABLE, SCORER_TABLE):
        declared = table_metrics(title)
        if not present & {m.name for m in declared}:
            continue
        columns: dict[str, str] = {}
        for metric in declared:
            if metric.name in present and metric.header not in columns:
                columns[metric.header] = metric.name
        for metric in declared:  # the study's columns stay, as "–", when not computed
            if metric.role in ("distance", "ranking") and metric.header not in columns:
                columns[metric.header] = metric.name
        order = list(dict.fromkeys(m.header for m in declared))
        columns = {header: columns[header] for header in order if header in columns}
        fad = [m.name for m in declared if m.group == "fad" and m.role == "distance" and m.name in present]
        suffix = f", FAD with {fad[0].removeprefix('fad_')}" if fad and title == STUDY_TABLE else ""
        result.append((title + suffix, _frame(rows, columns)))
    return result


def _frame(rows: dict[str, dict[str, float]], columns: dict[str, str]) -> pd.DataFrame:
    data = {header: [_cell(rows[row], metric) for row in rows] for header, metric in columns.items()}
    return pd.DataFrame(data, index=pd.Index(list(rows), name="clips"))


def _cell(metrics: dict[str, float], metric: str) -> str:
    value = metrics.get(metric, math.nan)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    low, high = metrics.get(f"{metric}_ci_low"), metrics.get(f"{metric}_ci_high")
    if low is None or high is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def markdown(rows: dict[str, dict[str, float]], tags: dict[str, str] | None = None) -> str:
    """The tables, with the protocol above them; values as `value [95% interval]`."""
    from evaluation.protocol import protocol_lines

    parts = ["\n".join(protocol_lines(tags))] if tags else []
    for title, frame in tables(rows):
        header = "| clips | " + " | ".join(frame.columns) + " |"
        rule = "|---|" + "---:|" * len(frame.columns)
        lines = [f"**{title}**", "", header, rule]
        for name, values in frame.iterrows():
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_tables(
    rows: dict[str, dict[str, float]], out_dir: str | os.PathLike, tags: dict[str, str] | None = None
) -> list[Path]:
    """table.md (as printed), table.csv (every metric, full precision, one row per clip set), protocol.json."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv = pd.DataFrame.from_dict(rows, orient="index")
    csv.index.name = "clips"
    written = [
        write_text_atomic(out / "table.md", markdown(rows, tags)),
        write_text_atomic(out / "table.csv", csv.to_csv()),
    ]
    if tags:
        written.append(write_text_atomic(out / "protocol.json", json.dumps(tags, indent=2, sort_keys=True)))
    return written


def write_per_class(
    per_class: pd.DataFrame, out_dir: str | os.PathLike, real: pd.DataFrame | None = None
) -> list[Path]:
    """per_class.csv and per_class.png: top-1 accuracy of each class, a bar per classifier; with `real` (the real
    held-out clips' per-class table) the real clips' bar beside each (`real_<classifier>_top1` in the CSV)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    accuracy_columns = [c for c in per_class.columns if c.endswith("_top1")]
    if real is not None:
        real_columns = real[["target"] + [c for c in accuracy_columns if c in real.columns]]
        per_class = per_class.merge(real_columns.add_prefix("real_").rename(columns={"real_target": "target"}),
                                    on="target", how="left")  # fmt: skip
    csv_path = write_text_atomic(out / "per_class.csv", per_class.to_csv(index=False))
    bars = [(column, column, None) for column in accuracy_columns]
    if real is not None:  # generated and real of each classifier next to each other
        bars = [bar for column in accuracy_columns
                for bar in ((column, f"{column} (generated)", None), (f"real_{column}", f"{column} (real)", "//"))
                if bar[0] in per_class.columns]  # fmt: skip
    figure, axis = plt.subplots(figsize=(8, max(3.0, 0.2 * len(per_class) * max(1, len(bars) / 2))))
    height = 0.8 / max(1, len(bars))
    positions = np.arange(len(per_class))
    for i, (column, label, hatch) in enumerate(bars):
        axis.barh(positions + i * height, per_class[column].fillna(0.0), height=height, label=label, hatch=hatch,
                  alpha=0.6 if hatch else 1.0)  # fmt: skip
    axis.set_yticks(positions + height * (len(bars) - 1) / 2, per_class["category"], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("top-1 accuracy of the class's clips")
    if bars:
        axis.legend(loc="lower right", fontsize=8)
    figure_path = out / "per_class.png"
    save_figure(figure, figure_path)
    return [csv_path, figure_path]


def write_confusion(
    scores: np.ndarray, targets: np.ndarray, path: str | os.PathLike, title: str, categories=ESC50_CATEGORIES
) -> Path:
    """A 50 x 50 confusion matrix (rows: intended class, columns: predicted), as fractions of each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(categories)
    counts = confusion_matrix(scores, targets, len(categories))
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(11, 10))
    image = axis.imshow(fractions, cmap="viridis", vmin=0, vmax=1)
    ticks = np.arange(len(categories))
    axis.set_xticks(ticks, categories, rotation=90, fontsize=6)
    axis.set_yticks(ticks, categories, fontsize=6)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("intended class")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.04)
    save_figure(figure, path)
    return Path(path)
