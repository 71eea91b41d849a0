"""The results table: mean ± std over seeds per configuration, from runs logged into a real MLflow store."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest

from evaluation import report

AXES = ["train.loss", "model.attention", "data.normalize"]
# (loss, attention, normalize) -> per-seed (fd_esc, esc_top1); random-looking numbers, not a pattern
LOGGED = {
    ("l1", "True", "True"): [(3.1, 0.10), (2.7, 0.14), (3.4, 0.08)],
    ("l2", "True", "True"): [(2.2, 0.21), (2.5, 0.19), (1.9, 0.26)],
    ("l1", "True", "False"): [(5.0, 0.02)],
}


def new_store(tmp_path: Path, monkeypatch, experiment_name: str, artifact_location: str = ""):
    """A fresh SQLite store with one experiment and a parent run: (client, experiment id, parent run id)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.create_experiment(
        experiment_name, artifact_location=artifact_location or str(tmp_path / "artifacts")
    )
    return client, experiment, client.create_run(experiment, run_name="sweep").info.run_id


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> tuple[str, str]:
    """A sqlite store holding a parent run, its children above, one unrelated run, and a real-data ceiling."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.create_experiment("report-test", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    for (loss, attention, normalize), seeds in LOGGED.items():
        for seed, (fd, top1) in enumerate(seeds):
            run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "sweep.axes": json.dumps(AXES)})
            run_id = run.info.run_id
            for key, value in (("train.loss", loss), ("model.attention", attention), ("data.normalize", normalize),
                               ("seed", seed), ("output_dir", f"/x/{run_id}")):  # fmt: skip
                client.log_param(run_id, key, value)
            # Runs of the L2 configuration log in sections (eval/), as evaluation does now; the rest as it did before.
            section = "eval/" if loss == "l2" else ""
            client.log_metric(run_id, f"{section}fd_esc", fd)
            client.log_metric(run_id, f"{section}esc_top1", top1)
            if loss == "l2":  # one configuration measured with the study's VGGish FAD too
                client.log_metric(run_id, "eval/fad_vggish", 14.0 + seed)
            client.set_terminated(run_id)
    stray = client.create_run(experiment).info.run_id  # not the sweep's: must not be counted
    client.log_param(stray, "train.loss", "l1")
    client.log_metric(stray, "fd_esc", 100.0)
    client.log_metric(parent, "real_fd_esc", 0.5)
    client.log_metric(parent, "real_esc_top1", 0.9)
    return uri, parent


def test_mean_and_std_over_seeds_per_configuration(store, tmp_path: Path):
    _, parent = store
    files = report.write_report("report-test", tmp_path / "out", parent_run_id=parent)
    table = files.table.set_index("configuration")
    for (loss, attention, normalize), seeds in LOGGED.items():
        row = table.loc[f"loss={loss}, attention={attention}, normalize={normalize}"]
        fds = [fd for fd, _ in seeds]
        assert row["n"] == len(seeds)
        assert row["fd_esc_mean"] == pytest.approx(statistics.mean(fds))
        if len(seeds) > 1:
            assert row["fd_esc_std"] == pytest.approx(statistics.stdev(fds))
            assert row["esc_top1_std"] == pytest.approx(statistics.stdev([t for _, t in seeds]))
        else:
            assert pd.isna(row["fd_esc_std"])  # one seed: no spread to report
    # The study's numbers sit beside the matching configurations.
    assert table.loc["loss=l1, attention=True, normalize=True", "study"] == "L1"
    assert table.loc["loss=l2, attention=True, normalize=True", "fad_vggish_published"] == pytest.approx(14.44)
    assert table.loc["loss=l1, attention=True, normalize=False", "ca_map10_published"] == pytest.approx(0.160)
    # The ceiling row comes from the real_* metrics.
    assert table.loc["real data (ceiling)", "fd_esc_mean"] == pytest.approx(0.5)
    assert table.loc["real data (ceiling)", "esc_top1_mean"] == pytest.approx(0.9)

    markdown = files.markdown.read_text()
    # The study's numbers appear only in the column of the metric they were measured with: its VGGish FAD beside
    # the runs' VGGish FAD, never beside the offline scorer's FD; its CLAP accuracy nowhere (no run measured it).
    header = next(line for line in markdown.splitlines() if line.startswith("| configuration"))
    assert "study" not in header and "fad_vggish" in header
    l2 = next(line for line in markdown.splitlines() if line.startswith("| loss=l2, attention=True, normalize=True"))
    cells = [cell.strip() for cell in l2.strip("|").split("|")]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert cells[columns.index("fad_vggish")].endswith("(study L2: 14.44)")
    assert "study" not in cells[columns.index("fd_esc")] and "study" not in cells[columns.index("esc_top1")]
    assert "21.85" in markdown and "0.076" not in markdown  # L1 without normalization: its FAD only
    assert f"{statistics.mean([3.1, 2.7, 3.4]):.4g} ± {statistics.stdev([3.1, 2.7, 3.4]):.2g}" in markdown
    written = pd.read_csv(files.csv)
    assert len(written) == len(LOGGED) + 1  # configurations + the ceiling
    assert files.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_whole_experiment_groups_by_the_params_that_differ(store, tmp_path: Path):
    runs = report.load_runs("report-test")  # every run with metrics: the stray one included
    assert len(runs) == sum(len(s) for s in LOGGED.values()) + 1
    untagged = runs.drop(columns=["tags.sweep.axes"])
    table = report.summarize(untagged, report.find_axes(untagged))
    # Without the sweep's tag the axes are inferred: the params that vary, minus seed and output_dir
    # (attention is True in every run: not an axis).
    assert set(report.find_axes(untagged)) == {"train.loss", "data.normalize"}
    assert "seed" not in table.columns and "output_dir" not in table.columns
    assert len(table) == len(LOGGED) + 1  # configurations + the stray run; no ceiling here


def test_cli_logs_the_report_to_the_parent_run(store, tmp_path: Path, capsys):
    import mlflow

    uri, parent = store
    report.main(["--experiment", "report-test", "--parent", parent, "--tracking-uri", uri,
                 "--out", str(tmp_path / "cli"), "--log-to-parent"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "| configuration | n | fad_vggish | fd_esc | esc_top1 |" in printed
    assert f"MLflow parent run (report logged under report/): {parent}" in printed and "-m mlflow ui" in printed
    logged = {Path(f.path).name for f in mlflow.tracking.MlflowClient().list_artifacts(parent, "report")}
    assert logged == {"report.md", "report.csv", "report.png"}


def test_a_baseline_scored_under_two_protocols_keeps_its_differences_and_is_named(tmp_path: Path, monkeypatch):
    client, experiment, parent = new_store(tmp_path, monkeypatch, "mixed")
    for variant, fds in {"l2": [2.0, 2.4], "l1": [1.5, 2.1]}.items():
        for seed, fd in enumerate(fds):
            preprocessing = "level as decoded" if (variant, seed) == ("l2", 1) else "peak-normalized"
            tags = {"mlflow.parentRunId": parent, "variant": variant, "sweep.axes": json.dumps(["variant"]),
                    "evaluation.preprocessing": preprocessing}  # fmt: skip
            run_id = client.create_run(experiment, tags=tags).info.run_id
            client.log_param(run_id, "seed", seed)
            client.log_metric(run_id, "eval/fd_esc", fd)
    files = report.write_report("mixed", tmp_path / "out", parent, baseline="variant=l2")
    table = files.table.set_index("configuration")
    assert table.at["variant=l1", "fd_esc_diff"] == pytest.approx(-0.4)
    assert "the baseline's runs (variant=l2) were scored under different protocols" in files.markdown.read_text()


def test_logging_to_a_parent_whose_artifacts_are_served_needs_the_server(tmp_path: Path, monkeypatch, capsys):
    """A sweep's parent run keeps its artifacts behind the sweep's server (mlflow-artifacts:): through the SQLite
    store alone MLflow cannot write them, and the report says so in one line before any work."""
    _, _, parent = new_store(tmp_path, monkeypatch, "served", artifact_location="mlflow-artifacts:/1")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--experiment", "served", "--parent", parent, "--tracking-uri", uri,
                     "--out", str(tmp_path / "cli"), "--log-to-parent"])  # fmt: skip
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # (not MLflow's INFO)
    assert len(errors) == 1 and "give --tracking-uri http://HOST:PORT" in errors[0], errors
    assert not (tmp_path / "cli").exists()  # refused before the report was written


def test_unknown_experiment_exits_2(store, capsys):
    uri, _ = store
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--experiment", "no-such-experiment", "--tracking-uri", uri])
    assert exit_info.value.code == 2
    assert "no-such-experiment" in capsys.readouterr().err


def test_whole_experiment_ceiling_counts_each_run_once(store, tmp_path: Path):
    """Runs that log both their own metrics and real_* (the demo's real row): each counted once in the ceiling."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.create_experiment("report-ceiling", artifact_location=str(tmp_path / "artifacts-2"))
    for seed, real in enumerate((1.0, 3.0)):
        run_id = client.create_run(experiment).info.run_id
        client.log_param(run_id, "seed", seed)
        client.log_metric(run_id, "fd_esc", 10.0 + seed)
        client.log_metric(run_id, "real_fd_esc", real)
    table = report.write_report("report-ceiling", tmp_path / "out").table.set_index("configuration")
    ceiling = table.loc["real data (ceiling)"]
    assert ceiling["n"] == 2
    assert ceiling["fd_esc_mean"] == pytest.approx(2.0) and ceiling["fd_esc_std"] == pytest.approx(
        statistics.stdev([1, 3])
    )


def test_each_configuration_gets_an_interval_and_a_paired_difference_from_the_baseline(store, tmp_path: Path):
    """L1 against L2 (the study's best, the default baseline), seed by seed: a difference with its uncertainty."""
    from evaluation.intervals import paired_difference, t_interval

    _, parent = store
    files = report.write_report("report-test", tmp_path / "out", parent_run_id=parent)
    table = files.table.set_index("configuration")
    l1, l2 = LOGGED[("l1", "True", "True")], LOGGED[("l2", "True", "True")]
    row = table.loc["loss=l1, attention=True, normalize=True"]
    low, high = t_interval([fd for fd, _ in l1])
    assert (row["fd_esc_ci_low"], row["fd_esc_ci_high"]) == pytest.approx((low, high))
    by_seed = [{str(seed): fd for seed, (fd, _) in enumerate(seeds)} for seeds in (l1, l2)]
    expected = paired_difference(*by_seed)
    assert (row["fd_esc_diff"], row["fd_esc_diff_low"], row["fd_esc_diff_high"]) == pytest.approx(expected[:3])
    assert row["fd_esc_pairs"] == 3 and table.loc["loss=l2, attention=True, normalize=True", "baseline"]
    markdown = files.markdown.read_text()
    assert "Difference from the baseline (loss=l2, attention=True, normalize=True)" in markdown
    assert f"{expected[0]:+.3g} [{expected[1]:+.3g}, {expected[2]:+.3g}]" in markdown
    assert "(one pair: no interval)" in markdown  # the one-seed configuration
    # Another baseline by its short axis names; one that matches nothing is a clear error.
    other = report.write_report("report-test", tmp_path / "o2", parent, baseline="loss=l1,normalize=False")
    assert other.table.set_index("configuration").loc["loss=l1, attention=True, normalize=False", "baseline"]
    with pytest.raises(report.UserError, match="matches no configuration"):
        report.write_report("report-test", tmp_path / "o3", parent, baseline="loss=l3")


def test_variants_group_by_their_tag_and_only_the_studys_recipe_gets_its_numbers(tmp_path: Path, monkeypatch):
    """A sweep's `variant` axis is a tag, not a config key; a variant of L2 with another recipe (here v-prediction)
    is not the study's L2, so the study's numbers stay off its row."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.create_experiment("variants", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    logged = {"l2": ("epsilon", [2.0, 2.4, 1.8]), "v_min_snr": ("v_prediction", [1.5, 2.1, 1.4])}
    for variant, (prediction, fds) in logged.items():
        for seed, fd in enumerate(fds):
            tags = {"mlflow.parentRunId": parent, "variant": variant, "sweep.axes": json.dumps(["variant"])}
            run_id = client.create_run(experiment, tags=tags).info.run_id
            for key, value in (("train.loss", "l2"), ("model.attention", "True"), ("data.normalize", "True"),
                               ("train.prediction", prediction), ("seed", seed)):  # fmt: skip
                client.log_param(run_id, key, value)
            client.log_metric(run_id, "eval/fd_esc", fd)
            client.set_terminated(run_id)
    table = report.write_report("variants", tmp_path / "out", parent, baseline="variant=l2").table
    table = table.set_index("configuration")
    assert table.at["variant=l2", "n"] == 3 and table.at["variant=v_min_snr", "n"] == 3
    assert table.at["variant=l2", "study"] == "L2" and table.at["variant=v_min_snr", "study"] == ""
    assert table.at["variant=l2", "baseline"]
    assert table.at["variant=v_min_snr", "fd_esc_diff"] == pytest.approx(statistics.mean([-0.5, -0.3, -0.4]))


def test_a_recipe_param_older_runs_did_not_log_counts_as_the_studys():
    assert report._is_default(float("nan"), "epsilon") and report._is_default(None, "epsilon")
    assert report._is_default("epsilon", "epsilon") and not report._is_default("v_prediction", "epsilon")


def test_a_configuration_scored_under_another_protocol_gets_no_difference_and_its_own_ceiling(
    tmp_path: Path, monkeypatch
):
    """`data.level=fixed` changes the scorer's preprocessing of real and generated clips alike (found by the CPU
    study): its FD is on another scale, so a paired difference from a peak-normalized baseline would mix the
    recipe's effect with the protocol's. The report names the difference and compares it with its own ceiling."""
    client, experiment, parent = new_store(tmp_path, monkeypatch, "protocols")
    peak, as_decoded = "decoded at 22050 Hz, peak-normalized to 0.9", "decoded at 22050 Hz, level as decoded"
    logged = {"l2": (peak, [2.0, 2.4, 1.8], 0.5), "l1": (peak, [1.5, 2.1, 1.4], 0.5),
              "level_fixed": (as_decoded, [3.0, 3.5, 2.9], 0.8)}  # fmt: skip
    for variant, (preprocessing, fds, real_fd) in logged.items():
        for seed, fd in enumerate(fds):
            tags = {"mlflow.parentRunId": parent, "variant": variant, "sweep.axes": json.dumps(["variant"]),
                    "evaluation.preprocessing": preprocessing, "evaluation.classes": "36"}  # fmt: skip
            run_id = client.create_run(experiment, tags=tags).info.run_id
            client.log_param(run_id, "seed", seed)
            client.log_metric(run_id, "eval/fd_esc", fd)
            client.log_metric(run_id, "ceiling/real_fd_esc", real_fd)
            client.log_metric(run_id, "eval/repr_fd_esc", real_fd + 0.1)
            client.set_terminated(run_id)
    client.log_metric(parent, "real_fd_esc", 0.5)
    files = report.write_report("protocols", tmp_path / "out", parent, baseline="variant=l2")
    table = files.table.set_index("configuration")
    assert table.at["variant=l1", "fd_esc_diff"] == pytest.approx(statistics.mean([-0.5, -0.3, -0.4]))
    assert not table.at["variant=level_fixed", "comparable"] and table.at["variant=l1", "comparable"]
    assert pd.isna(table.at["variant=level_fixed", "fd_esc_diff"])
    markdown = files.markdown.read_text()
    assert f"Preprocessing (real and generated alike): {peak}." in markdown.split("|")[0]  # the baseline's, on top
    assert f"- variant=level_fixed: Preprocessing (real and generated alike): {as_decoded}." in markdown
    assert "| variant=level_fixed | 0 | – (another protocol) |" in markdown
    assert "| real data, scored as for variant=level_fixed | 0.8 |" in markdown
    assert len(files.csv.read_text().splitlines()) == 1 + 3 + 1  # one line per configuration, and the ceiling
