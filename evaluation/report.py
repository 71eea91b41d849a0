"""The study's results table from MLflow: mean +- std over seeds per configuration, beside the paper's.

    python -m evaluation.report --experiment esc50-diffusion [--parent RUN_ID] [--out DIR]

Reads a sweep's child runs (or every run of an experiment), groups them by the swept axes, and
writes report.md, report.csv and report.png (bars with error bars per metric), each atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.errors import UserError, exit_on_user_error
from core.files import write_text_atomic
from core.tracking import configure_tracking

# What evaluation logs: FAD and CLAP accuracy (need model weights), and the offline scorer (`esc`).
METRICS = ("fad_vggish", "ca_top1", "ca_top5", "ca_top10", "ca_map10",
           "fd_esc", "esc_top1", "esc_top5", "esc_top10", "esc_map10")  # fmt: skip
LOWER_IS_BETTER = {"fad_vggish", "fd_esc"}
REAL_PREFIX = "real_"  # the same metrics of real clips: the ceiling a model can reach
CEILING = "real data (ceiling)"
PUBLISHED_METRICS = ("fad_vggish", "ca_top1", "ca_top5", "ca_top10", "ca_map10")
# The study's published results (FAD, CA top-1, top-5, top-10, mAP@10), keyed by the settings they used.
PUBLISHED = {
    "L1": ({"train.loss": "l1", "model.attention": "True", "data.normalize": "True"},
           (15.47, 0.156, 0.411, 0.562, 0.266)),
    "L2": ({"train.loss": "l2", "model.attention": "True", "data.normalize": "True"},
           (14.44, 0.220, 0.504, 0.674, 0.341)),
    "L1 without attention": ({"train.loss": "l1", "model.attention": "False", "data.normalize": "True"},
                             (15.21, 0.202, 0.489, 0.661, 0.324)),
    "L1 without normalization": ({"train.loss": "l1", "model.attention": "True", "data.normalize": "False"},
                                 (21.85, 0.076, 0.262, 0.425, 0.160)),
}  # fmt: skip
# Params that say where or how a run was recorded, not what was trained: never axes.
NOT_AXES = {"seed", "output_dir", "tracking.run_name", "tracking.tracking_uri", "tracking.experiment", "data.cache_dir",
            "data.preprocess_workers", "train.dataloader_workers"}  # fmt: skip


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    figure: Path
    table: pd.DataFrame


def load_runs(experiment: str, parent_run_id: str | None = None, require_metrics: bool = True) -> pd.DataFrame:
    """One row per run that logged at least one metric of the table (params.*, metrics.*, tags.* columns)."""
    import mlflow

    if mlflow.get_experiment_by_name(experiment) is None:
        raise UserError(f"no MLflow experiment named '{experiment}' at {mlflow.get_tracking_uri()}")
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else ""
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=query, max_results=50000)
    if not require_metrics:
        return runs
    columns = [f"metrics.{m}" for m in METRICS if f"metrics.{m}" in runs.columns]
    if runs.empty or not columns:
        where = f"under parent run {parent_run_id}" if parent_run_id else f"in experiment '{experiment}'"
        raise UserError(f"no runs with evaluation metrics ({', '.join(METRICS[:2])}, ...) {where}")
    return runs[runs[columns].notna().any(axis=1)].reset_index(drop=True)


def find_axes(runs: pd.DataFrame) -> list[str]:
    """The sweep's axes as tagged by the sweep; otherwise the params whose values differ between runs."""
    if "tags.sweep.axes" in runs.columns:
        tagged = runs["tags.sweep.axes"].dropna()
        if not tagged.empty:
            return list(json.loads(tagged.iloc[0]))
    params = [c for c in runs.columns if c.startswith("params.") and c[len("params.") :] not in NOT_AXES]
    return [c[len("params.") :] for c in params if runs[c].dropna().astype(str).nunique() > 1]


def summarize(runs: pd.DataFrame, axes: list[str], ceiling_runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per configuration: its axis values, n (seeds), mean and std of each metric, the paper's values.

    The ceiling row averages the `real_*` metrics found in `runs` and `ceiling_runs` (e.g. the parent run).
    """
    metrics = [m for m in METRICS if f"metrics.{m}" in runs.columns]
    frame = runs.copy()
    for axis in axes:
        column = f"params.{axis}"
        frame[column] = frame[column].astype(str) if column in frame.columns else "?"
    keys = [f"params.{axis}" for axis in axes]
    groups = frame.groupby(keys, sort=True, dropna=False) if keys else [((), frame)]
    rows = []
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        row: dict = {"configuration": ", ".join(f"{a.rsplit('.', 1)[-1]}={v}" for a, v in zip(axes, values)) or "all"}
        row.update(dict(zip(axes, values)))
        row["n"] = len(group)
        for metric in metrics:
            series = group[f"metrics.{metric}"].dropna()
            row[f"{metric}_mean"] = float(series.mean()) if len(series) else math.nan
            row[f"{metric}_std"] = float(series.std(ddof=1)) if len(series) > 1 else math.nan
        label, published = _published_for(group)
        row["study"] = label
        for metric, value in zip(PUBLISHED_METRICS, published):
            row[f"{metric}_published"] = value
        rows.append(row)
    table = pd.DataFrame(rows)
    # The ceiling's runs may overlap `runs` (a whole-experiment report): each run counts once.
    pool = runs if ceiling_runs is None else pd.concat([runs, ceiling_runs]).drop_duplicates("run_id")
    ceiling = _ceiling_row(pool, metrics)
    if ceiling:
        table = pd.concat([table, pd.DataFrame([ceiling])], ignore_index=True)
    return table


def _published_for(group: pd.DataFrame) -> tuple[str, tuple]:
    first = group.iloc[0]
    for label, (settings, values) in PUBLISHED.items():
        if all(str(first.get(f"params.{key}", "")) == value for key, value in settings.items()):
            return label, values
    return "", (math.nan,) * len(PUBLISHED_METRICS)


def _ceiling_row(runs: pd.DataFrame, metrics: list[str]) -> dict | None:
    """Real clips scored like generated ones (metrics `real_*`), averaged over the runs that logged them."""
    present = [m for m in METRICS if runs.get(f"metrics.{REAL_PREFIX}{m}", pd.Series(dtype=float)).notna().any()]
    if not present:
        return None
    row: dict = {"configuration": CEILING, "study": "", "n": 0}
    for metric in present:
        series = runs[f"metrics.{REAL_PREFIX}{metric}"].dropna()
        row["n"] = max(row["n"], len(series))
        row[f"{metric}_mean"] = float(series.mean())
        row[f"{metric}_std"] = float(series.std(ddof=1)) if len(series) > 1 else math.nan
    return row


def to_markdown(table: pd.DataFrame) -> str:
    metrics = [m for m in METRICS if f"{m}_mean" in table.columns]
    header = ["configuration", "n"] + metrics + ["study (FAD / top-1 / top-5 / top-10 / mAP@10)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row["configuration"]), str(int(row["n"]))]
        cells += [_mean_std(row.get(f"{m}_mean"), row.get(f"{m}_std")) for m in metrics]
        published = [row.get(f"{m}_published", math.nan) for m in PUBLISHED_METRICS]
        has_published = any(isinstance(v, float) and not math.isnan(v) for v in published)
        cells.append(f"{row['study']}: " + " / ".join(f"{v:g}" for v in published) if has_published else "")
        lines.append("| " + " | ".join(cells) + " |")
    notes = "FAD and FD: lower is better; accuracies and mAP@10: higher is better. mean ± std over seeds (n)."
    return "\n".join(lines) + f"\n\n{notes}\n"


def _mean_std(mean, std) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {std:.2g}"


def plot(table: pd.DataFrame, path: Path) -> None:
    """One panel per metric: a bar per configuration (error bar = std), the study's value as a diamond."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.plots import save_figure

    metrics = [m for m in METRICS if f"{m}_mean" in table.columns and table[f"{m}_mean"].notna().any()]
    configs = table[table["configuration"] != CEILING]
    ceiling = table[table["configuration"] == CEILING]
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    positions = range(len(configs))
    for axis, metric in zip(axes[0], metrics):
        errors = configs[f"{metric}_std"].fillna(0.0)
        axis.bar(positions, configs[f"{metric}_mean"], yerr=errors, capsize=3, color="tab:blue", alpha=0.8)
        if f"{metric}_published" in configs.columns and configs[f"{metric}_published"].notna().any():
            axis.scatter(positions, configs[f"{metric}_published"], marker="D", color="black", zorder=3, label="study")
        if not ceiling.empty and f"{metric}_mean" in ceiling.columns and ceiling[f"{metric}_mean"].notna().any():
            axis.axhline(float(ceiling[f"{metric}_mean"].iloc[0]), color="tab:green", linestyle="--", label="real")
        arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
        axis.set_title(f"{metric} {arrow}", fontsize=9)
        axis.set_xticks(list(positions))
        axis.set_xticklabels(configs["configuration"], rotation=60, ha="right", fontsize=6)
    for axis in axes[0]:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="best")
    save_figure(figure, path)


def write_report(experiment: str, out_dir: str | os.PathLike, parent_run_id: str | None = None) -> ReportFiles:
    """Read the runs from the current tracking URI and write report.md, report.csv and report.png into `out_dir`."""
    runs = load_runs(experiment, parent_run_id)
    # The ceiling may be logged on the sweep's parent run or on runs of its own (evaluating real clips).
    ceiling_runs = load_runs(experiment, None, require_metrics=False)
    if parent_run_id:
        ceiling_runs = ceiling_runs[ceiling_runs["run_id"] == parent_run_id]
    table = summarize(runs, find_axes(runs), ceiling_runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out / "report.md", out / "report.csv", out / "report.png", table)
    title = f"# Results: {experiment}" + (f" (sweep run {parent_run_id})" if parent_run_id else "") + "\n\n"
    write_text_atomic(files.markdown, title + to_markdown(table))
    write_text_atomic(files.csv, table.to_csv(index=False))
    plot(table, files.figure)
    return files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--parent", help="a sweep's parent run id: only its child runs (default: the whole experiment)")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--out", help="output folder (default: outputs/reports/<experiment>)")
    parser.add_argument("--log-to-parent", action="store_true", help="also log the files to the --parent run")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_tracking(args.tracking_uri)
    out = Path(args.out or Path("outputs") / "reports" / args.experiment)
    files = write_report(args.experiment, out, args.parent)
    if args.log_to_parent and args.parent:
        import mlflow

        mlflow.tracking.MlflowClient().log_artifacts(args.parent, str(out), "report")
    print(files.markdown.read_text())
    print(f"wrote {files.markdown}, {files.csv}, {files.figure}")


if __name__ == "__main__":
    main()
