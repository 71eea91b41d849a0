"""`python -m evaluation.evaluate`: --help, and a whole run on a tiny model's clips, logged to its MLflow run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from evaluation.evaluate import main
from evaluation.metrics import logged_name

REPO = Path(__file__).resolve().parents[1]
ESC_METRICS = {"esc_top1", "esc_top5", "esc_top10", "esc_map10", "fd_esc"}


def test_help_lists_the_options():
    result = subprocess.run(
        [sys.executable, "-m", "evaluation.evaluate", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for option in ("--generated", "--model", "--reference", "--reference-folds", "--metrics", "--json", "--ckpt-dir"):
        assert option in result.stdout


@pytest.fixture
def model_with_own_run(tmp_path, trained_tiny_model):
    """A copy of the tiny model whose audio.json points at a run in a tracking store inside tmp_path."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.create_experiment("eval-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment, run_name="tiny").info.run_id
    client.set_terminated(run_id, "FINISHED")
    model = tmp_path / "tiny" / "model"  # as in a training output_dir: the table names it "tiny"
    shutil.copytree(trained_tiny_model / "model", model)
    manifest = json.loads((model / "audio.json").read_text())
    (model / "audio.json").write_text(json.dumps({**manifest, "mlflow_run_id": run_id}))
    return model, uri, run_id


@pytest.mark.slow
def test_cli_generates_scores_writes_tables_and_logs_to_the_models_run(
    model_with_own_run, tmp_path, tmp_path_factory, esc50_mini, capsys
):
    import mlflow

    model, uri, run_id = model_with_own_run
    out = tmp_path / "evaluation"
    cache = tmp_path_factory.getbasetemp() / "evaluation-cache"  # shared with test_eval_scorer: one training
    main(
        ["--model", str(model), "--per-class", "1", "--steps", "2", "--reference", str(esc50_mini),
         "--metrics", "esc", "--out", str(out), "--json", str(tmp_path / "scores.json"), "--cache-dir", str(cache),
         "--tracking-uri", uri, "--no-progress"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert (
        "| clips | FD (ESC scorer) | FD∞ (ESC scorer) | ESC Top 1 | ESC Top 5 | ESC Top10 | ESC mAP10 | memorized |"
        in printed
    )
    assert "| real data (held-out) |" in printed and "| tiny |" in printed
    assert "| real data through mel + Griffin-Lim (representation ceiling) |" in printed
    # The protocol above the table: the model's 76 training clips kept out, 36 classes evaluated.
    assert "Protocol: reference 63 real clips" in printed and "36 classes" in printed
    assert "Generator's training clips: 76; every recording the generator trained on left out" in printed
    assert "peak-normalized to 0.9" in printed and "95% bootstrap over clips" in printed

    generated = pd.read_csv(out / "generated" / "manifest.csv")
    assert sorted(generated["target"]) == list(range(50))  # generated first: one clip of each class
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert ESC_METRICS | {f"real_{name}" for name in ESC_METRICS} | {f"repr_{name}" for name in ESC_METRICS} <= set(
        scores
    )
    assert {"fd_esc_ci_low", "fd_esc_ci_high", "fd_esc_inf", "esc_top1_ci_low", "memorization_esc"} <= set(scores)
    assert all(0.0 <= scores[name] <= 1.0 for name in ESC_METRICS - {"fd_esc"})
    assert scores["fd_esc_ci_low"] <= scores["fd_esc"] <= scores["fd_esc_ci_high"]
    assert json.loads((out / "metrics.json").read_text()) == scores
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["evaluation.training_clips"] == "76" and protocol["evaluation.generated_left_out"] == "14"

    table = pd.read_csv(out / "table.csv", index_col="clips")
    assert list(table.index) == [
        "real data (held-out)", "real data through mel + Griffin-Lim (representation ceiling)", "tiny"
    ]  # fmt: skip
    assert table.loc["tiny", "esc_top1"] == pytest.approx(scores["esc_top1"])
    per_class = pd.read_csv(out / "per_class.csv")
    assert len(per_class) == 36 and per_class["clips"].eq(1).all()  # the evaluated classes
    assert per_class["esc_top1"].mean() == pytest.approx(scores["esc_top1"])
    for figure in ("per_class.png", "confusion_esc.png"):
        assert (out / figure).stat().st_size > 10_000

    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(run_id)
    assert {name: run.data.metrics[logged_name(name)] for name in scores} == pytest.approx(scores)
    assert run.data.tags["evaluation.reference"] == str(esc50_mini)
    assert run.data.tags["evaluation.reference_overlaps_training"] == "false"
    logged = {item.path for item in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/table.md", "evaluation/table.csv", "evaluation/confusion_esc.png", "evaluation/per_class.png",
            "evaluation/clips"} <= logged  # fmt: skip
    # A few scored clips of each evaluated class, to listen to in the UI (one per class was generated here).
    assert len(client.list_artifacts(run_id, "evaluation/clips")) == 36
    assert per_class["real_esc_top1"].notna().all()  # the per-class bars: generated beside real
    assert f"evaluation: {out.resolve()}" in printed and f"MLflow run (under evaluation/): {run_id}" in printed
    assert f"-m mlflow ui --backend-store-uri {uri}" in printed

    # Again on the same clips, as a new run linked to the model's (the scorer comes from the cache): the same
    # settings reuse them, and say so.
    again = ["--model", str(model), "--generated", str(out / "generated"), "--reference", str(esc50_mini),
             "--metrics", "esc", "--out", str(tmp_path / "again"), "--cache-dir", str(cache), "--tracking-uri", uri,
             "--new-run", "--no-real-row", "--no-progress", "--per-class", "1", "--steps", "2"]  # fmt: skip
    main(again)
    assert "reusing 50 clips in" in capsys.readouterr().out
    linked = client.search_runs([run.info.experiment_id], f"tags.evaluates_run_id = '{run_id}'")
    assert len(linked) == 1 and linked[0].data.metrics["eval/esc_top1"] == pytest.approx(scores["esc_top1"])
    assert "ceiling/real_esc_top1" not in linked[0].data.metrics

    # Other settings never score the old clips: a folder the user named is refused, naming the difference...
    with pytest.raises(SystemExit) as refused:
        main([*again[:-4], "--per-class", "2", "--steps", "2"])
    assert refused.value.code == 2 and "per_class 1 -> 2" in capsys.readouterr().err
    # ... the evaluation's own folder is regenerated.
    main(["--model", str(model), "--per-class", "2", "--steps", "2", "--reference", str(esc50_mini), "--metrics",
          "esc", "--out", str(out), "--cache-dir", str(cache), "--no-mlflow", "--no-real-row",
          "--no-progress"])  # fmt: skip
    replaced = capsys.readouterr().out
    assert "replacing the 50 clips" in replaced and "per_class 1 -> 2" in replaced
    regenerated = pd.read_csv(out / "generated" / "manifest.csv")
    assert len(regenerated) == 100 and sorted(set(regenerated["target"])) == list(range(50))


def test_a_model_without_its_training_record_is_refused_before_any_work(
    tmp_path, trained_tiny_model, esc50_mini, capsys
):
    model = tmp_path / "old" / "model"
    shutil.copytree(trained_tiny_model / "model", model)
    manifest = json.loads((model / "audio.json").read_text())
    manifest.pop("training")  # as a model saved before the record existed
    (model / "audio.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(model), "--reference", str(esc50_mini), "--metrics", "esc", "--no-mlflow",
              "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "no training record" in capsys.readouterr().err
    assert not (tmp_path / "out" / "generated").exists() and not (tmp_path / "cache").exists()
