"""The tiny ablation grid on a real local Ray (2 CPUs) logging through a real MLflow server.

One Ray and one server for the module: the 2x2x2 grid, a trial that fails once and is retried,
and a GPU request that cannot be met.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_sweep_helpers import ABLATION_TINY, RECIPE_TINY, STUDY_CPU, child_runs, tiny_sweep
from tuning.sweep import run_sweep
from tuning.trial import FAIL_ONCE_ENV, KEY_TAG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on 127.0.0.1 over a SQLite store, for the module."""
    from tuning.tracking_server import tracking_server

    folder = tmp_path_factory.mktemp("mlflow")
    with tracking_server(f"sqlite:///{folder / 'mlflow.db'}", folder / "server.log") as uri:
        yield uri


def test_tiny_grid_gives_eight_child_runs_under_one_parent_and_the_table(
    local_ray, mlflow_server, tmp_path: Path, esc50_mini: Path, spectrogram_cache_dir: Path
):
    import mlflow

    spec = tiny_sweep(tmp_path, "grid", mlflow_server, esc50_mini, spectrogram_cache_dir)
    outcome = run_sweep(spec)
    assert (outcome.finished, outcome.total, outcome.errored) == (8, 8, [])

    mlflow.set_tracking_uri(mlflow_server)
    children = child_runs(spec, outcome.parent_run_id)
    assert len(children) == 8
    combinations = {(r.data.tags["train.loss"], r.data.tags["model.attention"], r.data.tags["data.normalize"])
                    for r in children}  # fmt: skip
    assert combinations == {(loss, a, n) for loss in ("l1", "l2") for a in ("True", "False") for n in ("True", "False")}
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["train.loss"] == run.data.tags["train.loss"]  # the trial trained what it is tagged
        assert {"eval/esc_top1", "eval/fd_esc", "train/loss"} <= set(run.data.metrics)
        # Each configuration's own ceilings, intervals and memorization share, under a protocol it records.
        expected = {"ceiling/real_fd_esc", "ceiling/repr_fd_esc", "eval/fd_esc_ci_low", "eval/memorization_esc"}
        assert expected <= set(run.data.metrics)
        assert run.data.tags["evaluation.reference_overlaps_training"] == "false"
        assert Path(run.data.tags["output_dir"]).parent == outcome.sweep_dir / "trials"
    parent = mlflow.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and json.loads(parent.data.tags["sweep.axes"]) == list(spec.grid)

    # Real held-out clips: the ceiling.
    assert {"ceiling/real_fd_esc", "ceiling/real_esc_top1"} <= set(parent.data.metrics)
    table = (outcome.report_dir / "report.csv").read_text().splitlines()
    assert len(table) == 1 + 8 + 1  # header, one row per configuration (1 seed each), the ceiling
    assert table[-1].startswith("real data (ceiling)")
    markdown = (outcome.report_dir / "report.md").read_text()
    assert "Protocol: reference" in markdown and "Difference from the baseline (loss=l2" in markdown
    assert "| representation of loss=l1, attention=False, normalize=False |" in markdown
    reported = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(outcome.parent_run_id, "report")}
    assert reported == {"report/report.md", "report/report.csv", "report/report.png"}


def test_the_cpu_study_runs_every_variant_at_its_smallest_size(
    local_ray, mlflow_server, tmp_path: Path, esc50_mini: Path, spectrogram_cache_dir: Path
):
    """configs/study_cpu.yaml as recorded, at 1 seed and 2 steps: every variant trains, generates and is scored,
    and the parent run holds the report, with its paired differences from the fixed baseline."""
    import mlflow

    spec = tiny_sweep(
        tmp_path, "study-smallest", mlflow_server, esc50_mini, spectrogram_cache_dir, "sweep.seeds=[0]",
        "train.max_steps=2", "train.checkpoint_every=2", "train.warmup_steps=1", "sample.steps=2",
        "sample.griffin_lim_iters=2", "sweep.generate.per_class=1",
        "sweep.evaluate.options={scorer_epochs: 5, bootstrap: 50}", file=STUDY_CPU,
    )  # fmt: skip
    outcome = run_sweep(spec)
    assert (outcome.finished, outcome.total, outcome.errored) == (len(spec.variants), len(spec.variants), [])
    mlflow.set_tracking_uri(mlflow_server)
    children = child_runs(spec, outcome.parent_run_id)
    assert sorted(run.data.tags["variant"] for run in children) == sorted(spec.variants)
    by_variant = {run.data.tags["variant"]: run for run in children}
    assert by_variant["cfg_g4"].data.params["sample.guidance_scale"] == "4.0"
    assert by_variant["mel64"].data.params["data.mel_bins"] == "64"
    markdown = (outcome.report_dir / "report.md").read_text()
    assert "Difference from the baseline (variant=l2)" in markdown
    for variant in spec.variants:
        assert f"| variant={variant} | 1 |" in markdown, variant
    reported = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(outcome.parent_run_id, "report")}
    assert reported == {"report/report.md", "report/report.csv", "report/report.png"}


def test_a_failed_trial_is_retried_without_a_duplicate_run(
    local_ray, mlflow_server, tmp_path: Path, esc50_mini: Path, spectrogram_cache_dir: Path, monkeypatch
):
    markers = tmp_path / "failed-once"
    monkeypatch.setenv(FAIL_ONCE_ENV, str(markers))
    with_token = mlflow_server.replace("http://", "http://researcher:s3cret-token@")  # the server ignores it
    # The recipe sweep, on an axis the report has never heard of (train.prediction): no code names it.
    spec = tiny_sweep(
        tmp_path, "retry", with_token, esc50_mini, spectrogram_cache_dir, "sweep.grid.train.loss=[l2]",
        "sweep.grid.train.loss_weighting=[min_snr]", "sweep.grid.train.prediction=[epsilon,v_prediction]",
        file=RECIPE_TINY,
    )  # fmt: skip
    outcome = run_sweep(spec)
    assert len(list(markers.iterdir())) == 2  # both trials failed once, after training and logging
    assert (outcome.finished, outcome.errored) == (2, [])
    children = child_runs(spec, outcome.parent_run_id)
    keys = [run.data.tags[KEY_TAG] for run in children]
    assert len(keys) == 2 and len(set(keys)) == 2  # the retry continued the run it had, no third run
    assert {run.data.params["train.prediction"] for run in children} == {"epsilon", "v_prediction"}
    markdown = (outcome.report_dir / "report.md").read_text()
    assert "| prediction=v_prediction, loss_weighting=min_snr, loss=l2 | 1 |" in markdown
    import mlflow

    parent = mlflow.tracking.MlflowClient(mlflow_server).get_run(outcome.parent_run_id)
    assert parent.data.params["base.tracking.tracking_uri"].startswith("http://***@127.0.0.1")
    assert "s3cret" not in json.dumps(parent.data.params) + (outcome.sweep_dir / "sweep.yaml").read_text()


def test_a_gpu_request_on_a_cpu_only_cluster_exits_2(
    local_ray, mlflow_server, tmp_path: Path, esc50_mini: Path, capsys
):
    from tuning.sweep import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(ABLATION_TINY), "--gpus-per-trial", "1", f"sweep.storage_path={tmp_path}",
              f"tracking.tracking_uri={mlflow_server}", f"data.source={esc50_mini}"])  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "gpus_per_trial=1" in error and "no GPUs" in error
    assert not (tmp_path / "ablation-tiny").exists()  # nothing started, nothing to resume by mistake


def test_asha_draws_the_space_stages_training_and_stopped_trials_are_not_failures(
    local_ray, mlflow_server, tmp_path: Path, esc50_mini: Path, spectrogram_cache_dir: Path
):
    import mlflow

    spec = tiny_sweep(
        tmp_path, "asha", mlflow_server, esc50_mini, spectrogram_cache_dir,
        "sweep.grid.train.loss=[l2]", "sweep.grid.model.attention=[false]", "sweep.grid.data.normalize=[true]",
        "sweep.search=asha", "sweep.num_samples=3", "sweep.asha.stages=2", "sweep.asha.grace_period=1",
        "train.log_every=2",
        "sweep.space.train.learning_rate={loguniform: [1.0e-4, 1.0e-2]}",
    )  # fmt: skip
    outcome = run_sweep(spec)
    assert outcome.errored == [] and outcome.finished >= 1  # ASHA lets the best trial run every stage
    assert outcome.finished + outcome.stopped_early == outcome.total == 3 and outcome.complete

    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.tracking.MlflowClient()
    runs = child_runs(spec, outcome.parent_run_id)
    drawn = {float(run.data.tags["train.learning_rate"]) for run in runs}
    assert len(runs) == 3 and len(drawn) == 3 and all(1e-4 <= lr <= 1e-2 for lr in drawn)
    for run in runs:
        assert float(run.data.params["train.learning_rate"]) == float(run.data.tags["train.learning_rate"])
        assert run.data.params["train.max_steps"] == "12"  # the LR schedule spans the whole budget
        trial = Path(run.data.tags["output_dir"])
        state = json.loads((trial / "trial_state.json").read_text())
        losses = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert (trial / "evaluation_stage1" / "metrics.json").is_file() and 6 in losses
        if state["stages_done"] == 2:  # stage 2 continued stage 1's training, it did not start over
            resumed = client.get_metric_history(run.info.run_id, "train/resumed_from_step")
            assert [m.value for m in resumed] == [6] and max(losses) == 12 and len(losses) == len(set(losses))
            assert state["metrics"]["train_steps"] == 12 and run.info.status == "FINISHED"
    assert mlflow.get_run(outcome.parent_run_id).info.status == "FINISHED"
