"""The study's results table from MLflow: per configuration, mean +- std over seeds with a 95% interval,
the difference from a baseline configuration with a paired interval, and the ceilings, beside the paper's.

    python -m evaluation.report --experiment esc50-diffusion [--parent RUN_ID] [--baseline loss=l2] [--out DIR]

Reads a sweep's child runs (or every run of an experiment), groups them by the swept axes, and
writes report.md, report.csv and report.png (bars with 95% intervals per metric), each atomically.
A difference is "resolved" when its paired 95% interval over seeds excludes zero.
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
from evaluation.intervals import paired_difference, t_interval
from evaluation.metrics import (
    REAL_PREFIX,
    REGISTRY,
    REPRESENTATION_PREFIX,
    diagnostic_metrics,
    plain_name,
    summary_metrics,
)

# The report summarizes every registered (evaluation.metrics) distance and ranking metric the runs logged
# (FAD with any embedding model, CLAP accuracy, the offline scorer), then the diagnostics (memorization).
CEILING = "real data (ceiling)"
MIXED_PROTOCOL = "mixed"  # a configuration whose runs were scored under different protocols
PUBLISHED_METRICS = ("fad_vggish", "ca_top1", "ca_top5", "ca_top10", "ca_map10")
# What the study trained and sampled with (the config's defaults): a configuration that changes any of them is
# not one the study measured, whatever its loss, attention and normalization (runs without the key: as then).
STUDY_RECIPE = {
    "train.prediction": "epsilon", "train.loss_weighting": "none", "train.beta_schedule": "linear",
    "train.zero_terminal_snr": "False", "model.class_dropout": "0.0", "sample.guidance_scale": "1.0",
    "data.level": "peak", "data.mel_bins": "0", "data.frames": "0",
}  # fmt: skip
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
NOT_AXES = {"seed", "sample.seed_resolved", "output_dir", "tracking.run_name", "tracking.tracking_uri",
            "tracking.experiment", "data.cache_dir", "data.preprocess_workers", "train.dataloader_workers"}  # fmt: skip


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
    # Metrics logged in sections (eval/fd_esc, ceiling/real_fd_esc) read as their plain names; older runs logged
    # the plain names themselves. Where a run has both, the sectioned value is the newer one.
    renamed = {c: f"metrics.{plain_name(c[len('metrics.') :])}" for c in runs.columns if c.startswith("metrics.")}
    for column, plain in renamed.items():
        if column != plain:
            runs[plain] = runs[column].combine_first(runs[plain]) if plain in runs.columns else runs[column]
    if not require_metrics:
        return runs
    columns = [f"metrics.{m}" for m in summary_metrics() if f"metrics.{m}" in runs.columns]
    if runs.empty or not columns:
        where = f"under parent run {parent_run_id}" if parent_run_id else f"in experiment '{experiment}'"
        raise UserError(f"no runs with evaluation metrics ({', '.join(summary_metrics()[:2])}, ...) {where}")
    return runs[runs[columns].notna().any(axis=1)].reset_index(drop=True)


def find_axes(runs: pd.DataFrame) -> list[str]:
    """The sweep's axes as tagged by the sweep; otherwise the params whose values differ between runs."""
    if "tags.sweep.axes" in runs.columns:
        tagged = runs["tags.sweep.axes"].dropna()
        if not tagged.empty:
            return list(json.loads(tagged.iloc[0]))
    params = [c for c in runs.columns if c.startswith("params.") and c[len("params.") :] not in NOT_AXES]
    return [c[len("params.") :] for c in params if runs[c].dropna().astype(str).nunique() > 1]


def summarize(
    runs: pd.DataFrame, axes: list[str], ceiling_runs: pd.DataFrame | None = None, baseline: str = ""
) -> pd.DataFrame:
    """One row per configuration: its axis values, n (seeds), mean, std and 95% interval of each metric, its
    paired difference from the baseline configuration (`<metric>_diff`, `_diff_low`, `_diff_high`), its
    representation ceiling (`repr_<metric>_mean`), memorization shares, and the paper's values.

    The ceiling row averages the `real_*` metrics of `ceiling_runs` when they hold any and are not all the
    runs (a sweep's parent run), else those found in `runs` and `ceiling_runs`, each run once.
    `baseline`: `key=value,...` (axis names may be shortened to their last part); empty = the study's best
    configuration (L2) when present, else the first.
    """
    metrics = [m for m in summary_metrics() if f"metrics.{m}" in runs.columns]
    frame = runs.copy()
    for axis in axes:
        column = f"params.{axis}"
        if column not in frame.columns and f"tags.{axis}" in frame.columns:  # an axis that is no config key
            frame[column] = frame[f"tags.{axis}"]  # (a sweep's `variant`): its trials carry it as a tag
        frame[column] = frame[column].astype(str) if column in frame.columns else "?"
    frame["protocol"] = [_protocol_text(run) for _, run in frame.iterrows()]
    keys = [f"params.{axis}" for axis in axes]
    groups = list(frame.groupby(keys, sort=True, dropna=False)) if keys else [((), frame)]
    rows, per_seed = [], []
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        row: dict = {"configuration": ", ".join(f"{a.rsplit('.', 1)[-1]}={v}" for a, v in zip(axes, values)) or "all"}
        row.update(dict(zip(axes, values)))
        row["n"] = len(group)
        protocols = group["protocol"].unique()
        row["protocol"] = protocols[0] if len(protocols) == 1 else MIXED_PROTOCOL
        for metric in metrics:
            series = group[f"metrics.{metric}"].dropna()
            row[f"{metric}_mean"] = float(series.mean()) if len(series) else math.nan
            row[f"{metric}_std"] = float(series.std(ddof=1)) if len(series) > 1 else math.nan
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = t_interval(series.to_numpy())
        extras = [f"{prefix}{m}" for prefix in (REPRESENTATION_PREFIX, REAL_PREFIX) for m in metrics]
        for extra in extras + list(diagnostic_metrics()):
            if f"metrics.{extra}" in group.columns and group[f"metrics.{extra}"].notna().any():
                row[f"{extra}_mean"] = float(group[f"metrics.{extra}"].mean())
        label, published = _published_for(group)
        row["study"] = label
        row["esc50_classes"] = _is_esc50(group)
        for metric, value in zip(PUBLISHED_METRICS, published):
            row[f"{metric}_published"] = value
        rows.append(row)
        per_seed.append({m: _by_seed(group, m) for m in metrics})
    table = pd.DataFrame(rows)
    if len(table):
        _add_differences(table, per_seed, metrics, _baseline_index(table, axes, baseline))
    # A sweep's parent holds the ceiling once; its trials score the same clips again (beside their own
    # representation ceilings), which would only repeat it. Without a parent's: every run's, each once.
    pool = runs if ceiling_runs is None else pd.concat([runs, ceiling_runs]).drop_duplicates("run_id")
    if ceiling_runs is not None and _has_ceiling(ceiling_runs) and len(ceiling_runs) < len(pool):
        pool = ceiling_runs
    ceiling = _ceiling_row(pool, metrics)
    if ceiling:
        table = pd.concat([table, pd.DataFrame([ceiling])], ignore_index=True)
    return table


def _by_seed(group: pd.DataFrame, metric: str) -> dict[str, float]:
    """{seed: value} of one configuration's runs: what a paired comparison pairs (seed s with seed s)."""
    seeds = group["params.seed"] if "params.seed" in group.columns else pd.Series(range(len(group)), index=group.index)
    values = group[f"metrics.{metric}"]
    return {str(seed): float(value) for seed, value in zip(seeds, values) if pd.notna(value)}


def _baseline_index(table: pd.DataFrame, axes: list[str], baseline: str) -> int:
    if not baseline:
        best = table.index[table["study"] == "L2"]
        return int(best[0]) if len(best) else 0
    wanted = {}
    for item in baseline.split(","):
        key, _, value = item.partition("=")
        matches = [a for a in axes if a == key.strip() or a.rsplit(".", 1)[-1] == key.strip()]
        if not matches or not value:
            raise UserError(f"--baseline '{baseline}': '{item}' is not axis=value (axes: {', '.join(axes)})")
        wanted[matches[0]] = value.strip()
    found = table.index[[all(str(table.at[i, a]).lower() == v.lower() for a, v in wanted.items()) for i in table.index]]
    if not len(found):
        raise UserError(f"--baseline '{baseline}' matches no configuration of the report")
    if len(found) > 1:  # differences from "one of them" would mean nothing in particular
        raise UserError(f"--baseline '{baseline}' matches {len(found)} configurations: name every axis that differs")
    return int(found[0])


def _add_differences(table: pd.DataFrame, per_seed: list[dict], metrics: list[str], baseline: int) -> None:
    """Paired differences from the baseline, only for configurations scored under the baseline's protocol.

    A configuration that changes how clips are scored (`data.level` changes the scorer's preprocessing of real
    and generated clips alike) has numbers on another scale: its difference would mix the recipe's effect with
    the protocol's, so it is left out (`comparable` False) and the report says why.
    """
    table["baseline"] = table.index == baseline
    base_protocol = table.at[baseline, "protocol"]
    # A baseline whose own seeds were scored differently has no one scale to hold others to: every difference
    # is computed, and the report warns that they may mix protocols (`_other_protocols`).
    table["comparable"] = (table["protocol"] == base_protocol) | (base_protocol == MIXED_PROTOCOL)
    for metric in metrics:
        differences = [
            paired_difference(seeds[metric], per_seed[baseline][metric]) if comparable else (math.nan,) * 3 + (0,)
            for seeds, comparable in zip(per_seed, table["comparable"])
        ]
        table[f"{metric}_diff"] = [d[0] for d in differences]
        table[f"{metric}_diff_low"] = [d[1] for d in differences]
        table[f"{metric}_diff_high"] = [d[2] for d in differences]
        table[f"{metric}_pairs"] = [d[3] for d in differences]


def _protocol_text(run: pd.Series) -> str:
    """The protocol one run was scored under (its `evaluation.*` tags), as the report prints it; '' if untagged."""
    from evaluation.protocol import protocol_lines

    tags = {c[len("tags.") :]: str(v) for c, v in run.items() if c.startswith("tags.evaluation.") and pd.notna(v)}
    return "\n".join(protocol_lines(tags)) if tags else ""


def _published_for(group: pd.DataFrame) -> tuple[str, tuple]:
    first = group.iloc[0]
    if not _is_esc50(group):  # the study measured ESC-50's 50 classes: no comparison for another class set
        return "", (math.nan,) * len(PUBLISHED_METRICS)
    if any(not _is_default(first.get(f"params.{key}"), value) for key, value in STUDY_RECIPE.items()):
        return "", (math.nan,) * len(PUBLISHED_METRICS)  # another recipe: not what the study measured
    for label, (settings, values) in PUBLISHED.items():
        if all(str(first.get(f"params.{key}", "")) == value for key, value in settings.items()):
            return label, values
    return "", (math.nan,) * len(PUBLISHED_METRICS)


def _is_default(logged, default: str) -> bool:
    """A recipe param as the study had it: the default, or not logged (older runs, mixed with newer ones: NaN)."""
    return logged is None or (isinstance(logged, float) and math.isnan(logged)) or str(logged) == default


def _is_esc50(runs: pd.DataFrame) -> bool:
    """Runs scored on ESC-50's classes (the tag evaluation.class_set; runs from before it: ESC-50)."""
    tags = runs.get("tags.evaluation.class_set", pd.Series(dtype=object)).dropna()
    return bool((tags == "esc50").all())


def _has_ceiling(runs: pd.DataFrame) -> bool:
    return any(runs.get(f"metrics.{REAL_PREFIX}{m}", pd.Series(dtype=float)).notna().any() for m in summary_metrics())


def _ceiling_row(runs: pd.DataFrame, metrics: list[str]) -> dict | None:
    """Real clips scored like generated ones (metrics `real_*`), averaged over the runs that logged them."""
    present = [
        m for m in summary_metrics() if runs.get(f"metrics.{REAL_PREFIX}{m}", pd.Series(dtype=float)).notna().any()
    ]
    if not present:
        return None
    row: dict = {"configuration": CEILING, "study": "", "n": 0}
    for metric in present:
        series = runs[f"metrics.{REAL_PREFIX}{metric}"].dropna()
        row["n"] = max(row["n"], len(series))
        row[f"{metric}_mean"] = float(series.mean())
        row[f"{metric}_std"] = float(series.std(ddof=1)) if len(series) > 1 else math.nan
    return row


def to_markdown(table: pd.DataFrame, protocol: list[str] | None = None) -> str:
    metrics = [m for m in summary_metrics() if f"{m}_mean" in table.columns]
    memorized = [m for m in diagnostic_metrics() if f"{m}_mean" in table.columns]
    header = ["configuration", "n"] + metrics + memorized
    lines = (protocol or []) + ([""] if protocol else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [str(row["configuration"]), str(int(row["n"]))]
        cells += [_mean_std(row.get(f"{m}_mean"), row.get(f"{m}_std"), row.get(f"{m}_ci_low"), row.get(f"{m}_ci_high"))
                  + _published_cell(row, m) for m in metrics]  # fmt: skip
        cells += [_mean_std(row.get(f"{m}_mean"), None) for m in memorized]
        lines.append("| " + " | ".join(cells) + " |")
    directions = "; ".join(f"{m} {REGISTRY[m].arrow}" for m in metrics)
    notes = (
        f"{directions} (↓ lower is better, ↑ higher). mean ± std over seeds (n) "
        "[95% t interval of the mean]. memorization: share of generated clips nearer a training clip than real "
        "unseen clips typically are (about 0.1 for a generator as novel as real clips)."
    )
    if not set(PUBLISHED_METRICS) & set(metrics) and table.get("study", pd.Series(dtype=object)).astype(bool).any():
        notes += (
            " The study's published numbers (VGGish FAD, CLAP accuracy) are not shown: these runs measured neither, "
            "and no other metric compares with them."
        )
    parts = ["\n".join(lines), notes]
    if "esc50_classes" in table.columns and not table["esc50_classes"].fillna(True).astype(bool).all():
        parts.append(
            "The study's published values are left out for configurations scored on another class set than "
            "ESC-50's 50 classes (tag evaluation.class_set): they were measured on ESC-50 and compare with "
            "nothing else."
        )
    configurations = table[table["configuration"] != CEILING]
    other = _other_protocols(configurations)
    if other:
        parts.append(other)
    if "baseline" in table.columns and len(configurations) > 1:
        parts.append(_differences_markdown(configurations, metrics))
    ceilings = _ceilings_markdown(table, metrics)
    if ceilings:
        parts.append(ceilings)
    return "\n\n".join(parts) + "\n"


def _other_protocols(configurations: pd.DataFrame) -> str:
    """What differs for configurations not scored like the baseline (the protocol printed above is the baseline's)."""
    if "comparable" not in configurations.columns:
        return ""
    base = configurations[configurations["baseline"].astype(bool)].iloc[0]
    if base["protocol"] == MIXED_PROTOCOL:
        return (f"**Warning: the baseline's runs ({base['configuration']}) were scored under different protocols** "
                "(their `evaluation.*` tags differ): its differences from other configurations may mix the "
                "protocols' effects with the recipes'.")  # fmt: skip
    if configurations["comparable"].astype(bool).all():
        return ""
    base_lines = set(str(base["protocol"]).split("\n"))
    lines = ["**Scored under another protocol than the baseline** (the protocol above is the baseline's): these "
             "configurations' numbers are on another scale, so no difference from the baseline is computed; compare "
             "each with its own real ceiling (in the ceilings table)."]  # fmt: skip
    for _, row in configurations[~configurations["comparable"].astype(bool)].iterrows():
        if row["protocol"] == MIXED_PROTOCOL:
            lines.append(f"- {row['configuration']}: its runs were scored under different protocols")
            continue
        if not row["protocol"]:
            lines.append(f"- {row['configuration']}: its runs carry no protocol tags (scored by an older version)")
            continue
        differing = [line for line in str(row["protocol"]).split("\n") if line not in base_lines]
        lines.append(
            f"- {row['configuration']}: " + " ".join(differing or ["a protocol line of the baseline's is missing"])
        )
    return "\n".join(lines)


def _published_cell(row: pd.Series, metric: str) -> str:
    """` (study L2: 14.44)` in the column of the metric the study measured, for the configuration it matches."""
    value = row.get(f"{metric}_published", math.nan)
    if not isinstance(value, float) or math.isnan(value):
        return ""
    return f" (study {row['study']}: {value:g})"


def _differences_markdown(table: pd.DataFrame, metrics: list[str]) -> str:
    base = table[table["baseline"].astype(bool)].iloc[0]["configuration"]
    header = ["configuration", "pairs"] + metrics
    lines = [
        f"**Difference from the baseline ({base}), paired over seeds: mean [95% interval]**",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for _, row in table.iterrows():
        if row["baseline"]:
            continue
        pairs = min(int(row.get(f"{m}_pairs", 0) or 0) for m in metrics) if metrics else 0
        cells = [str(row["configuration"]), str(pairs)]
        for metric in metrics:
            mean, low, high = (row.get(f"{metric}_diff{s}") for s in ("", "_low", "_high"))
            if not row.get("comparable", True):
                cells.append("– (another protocol)")
            elif mean is None or math.isnan(mean):
                cells.append("–")
            elif low is None or math.isnan(low):
                cells.append(f"{mean:+.3g} (one pair: no interval)")
            else:
                verdict = "resolved" if low > 0 or high < 0 else "not resolved"
                cells.append(f"{mean:+.3g} [{low:+.3g}, {high:+.3g}] {verdict}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ceilings_markdown(table: pd.DataFrame, metrics: list[str]) -> str:
    """The real ceiling and each configuration's representation ceiling (real clips through its mel + inversion)."""
    represented = [m for m in metrics if f"{REPRESENTATION_PREFIX}{m}_mean" in table.columns]
    if not represented:
        return ""
    header = ["ceiling"] + represented
    lines = ["**Ceilings: real held-out clips, and the same clips through each configuration's representation**", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    ceiling = table[table["configuration"] == CEILING]
    if len(ceiling):
        lines.append(
            "| real data | " + " | ".join(_mean_std(ceiling.iloc[0].get(f"{m}_mean"), None) for m in represented) + " |"
        )
    for _, row in table[table["configuration"] != CEILING].iterrows():
        if not row.get("comparable", True):  # its own real ceiling: the real clips scored under its protocol
            cells = [_mean_std(row.get(f"{REAL_PREFIX}{m}_mean"), None) for m in represented]
            lines.append(f"| real data, scored as for {row['configuration']} | " + " | ".join(cells) + " |")
        cells = [_mean_std(row.get(f"{REPRESENTATION_PREFIX}{m}_mean"), None) for m in represented]
        lines.append(f"| representation of {row['configuration']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(mean, std, low=None, high=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:.4g}" if std is None or (isinstance(std, float) and math.isnan(std)) else f"{mean:.4g} ± {std:.2g}"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.4g}, {high:.4g}]"
    return text


def plot(table: pd.DataFrame, path: Path) -> None:
    """One panel per metric: a bar per configuration (error bar = std), the study's value as a diamond."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.plots import save_figure

    metrics = [m for m in summary_metrics() if f"{m}_mean" in table.columns and table[f"{m}_mean"].notna().any()]
    configs = table[table["configuration"] != CEILING]
    ceiling = table[table["configuration"] == CEILING]
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
    positions = range(len(configs))
    for axis, metric in zip(axes[0], metrics):
        means = configs[f"{metric}_mean"]
        # Error bars: the 95% interval of the mean over seeds (none with one seed).
        below = (means - configs[f"{metric}_ci_low"]).fillna(0.0).clip(lower=0)
        above = (configs[f"{metric}_ci_high"] - means).fillna(0.0).clip(lower=0)
        axis.bar(
            positions, means, yerr=[below, above], capsize=3, color="tab:blue", alpha=0.8, label="mean, 95% interval"
        )
        represented = f"{REPRESENTATION_PREFIX}{metric}_mean"
        if represented in configs.columns and configs[represented].notna().any():
            axis.scatter(positions, configs[represented], marker="_", s=200, color="tab:orange", zorder=3,
                         label="representation ceiling")  # fmt: skip
        if f"{metric}_published" in configs.columns and configs[f"{metric}_published"].notna().any():
            axis.scatter(positions, configs[f"{metric}_published"], marker="D", color="black", zorder=3, label="study")
        if not ceiling.empty and f"{metric}_mean" in ceiling.columns and ceiling[f"{metric}_mean"].notna().any():
            axis.axhline(
                float(ceiling[f"{metric}_mean"].iloc[0]), color="tab:green", linestyle="--", label="real ceiling"
            )
        axis.set_title(f"{metric} {REGISTRY[metric].arrow}", fontsize=9)
        axis.set_xticks(list(positions))
        axis.set_xticklabels(configs["configuration"], rotation=60, ha="right", fontsize=6)
    for axis in axes[0]:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="best")
    save_figure(figure, path)


def write_report(
    experiment: str, out_dir: str | os.PathLike, parent_run_id: str | None = None, baseline: str = ""
) -> ReportFiles:
    """Read the runs from the current tracking URI and write report.md, report.csv and report.png into `out_dir`."""
    runs = load_runs(experiment, parent_run_id)
    # The ceiling may be logged on the sweep's parent run or on runs of its own (evaluating real clips).
    ceiling_runs = load_runs(experiment, None, require_metrics=False)
    if parent_run_id:
        ceiling_runs = ceiling_runs[ceiling_runs["run_id"] == parent_run_id]
    table = summarize(runs, find_axes(runs), ceiling_runs, baseline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out / "report.md", out / "report.csv", out / "report.png", table)
    title = f"# Results: {experiment}" + (f" (sweep run {parent_run_id})" if parent_run_id else "") + "\n\n"
    write_text_atomic(files.markdown, title + to_markdown(table, _protocol(table)))
    # The protocol's lines joined on one line: a row of the CSV stays one line (for grep, wc, spreadsheets).
    flat = table.assign(protocol=table["protocol"].str.replace("\n", " / ")) if "protocol" in table else table
    write_text_atomic(files.csv, flat.to_csv(index=False))
    plot(table, files.figure)
    return files


def _protocol(table: pd.DataFrame) -> list[str]:
    """The protocol printed above the table: the baseline's (the others are named under the table), else the
    first configuration's that has one (as `summarize` found them)."""
    if "protocol" not in table.columns:
        return []
    first = table[table["baseline"].fillna(False).astype(bool)] if "baseline" in table.columns else table.iloc[:0]
    texts = [*first["protocol"], *table["protocol"]]
    texts = [text for text in texts if isinstance(text, str) and text and text != MIXED_PROTOCOL]
    return texts[0].split("\n") if texts else []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--parent", help="a sweep's parent run id: only its child runs (default: the whole experiment)")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--out", help="output folder (default: outputs/reports/<experiment>)")
    parser.add_argument("--log-to-parent", action="store_true", help="also log the files to the --parent run")
    parser.add_argument("--baseline", default="", help="configuration to compare with, e.g. loss=l2,attention=True "
                        "(default: the study's best, L2, when present)")  # fmt: skip
    return parser.parse_args(argv)


def _check_parent_artifacts_reachable(parent_run_id: str) -> None:
    """A sweep's runs keep their artifacts behind its MLflow server (`mlflow-artifacts:`); reading the store
    directly (a SQLite URI) can find the run but not write its artifacts: say so before any work."""
    import mlflow

    try:
        artifact_uri = mlflow.tracking.MlflowClient().get_run(parent_run_id).info.artifact_uri or ""
    except Exception as error:
        raise UserError(f"--parent {parent_run_id}: no such run at {mlflow.get_tracking_uri()} ({error})") from None
    if artifact_uri.startswith("mlflow-artifacts:") and not mlflow.get_tracking_uri().startswith(("http:", "https:")):
        raise UserError(
            f"--log-to-parent: run {parent_run_id} keeps its artifacts behind an MLflow server ({artifact_uri}); "
            "give --tracking-uri http://HOST:PORT of a server over this store (mlflow server --backend-store-uri ...)"
        )


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_tracking(args.tracking_uri, will_write=args.log_to_parent)
    if args.log_to_parent and args.parent:
        _check_parent_artifacts_reachable(args.parent)
    out = Path(args.out or Path("outputs") / "reports" / args.experiment)
    files = write_report(args.experiment, out, args.parent, args.baseline)
    if args.log_to_parent and args.parent:
        import mlflow

        mlflow.tracking.MlflowClient().log_artifacts(args.parent, str(out), "report")
    print(files.markdown.read_text())
    print(f"report: {files.markdown.resolve()} (and {files.csv.name}, {files.figure.name} beside it)")
    if args.parent:
        from core.tracking import where_to_look

        print(where_to_look(args.parent, "MLflow parent run" + (" (report logged under report/)"
                                                               if args.log_to_parent else "")))  # fmt: skip


if __name__ == "__main__":
    main()
