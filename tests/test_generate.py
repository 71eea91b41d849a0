"""Generation: clips and manifest from a model folder, an output_dir or an MLflow URI."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import soundfile

from core.errors import UserError
from core.generation import GenerationRequest, generate, parse_classes
from tests.conftest import REPO


def test_generate_writes_clips_and_manifest(trained_tiny_model, tmp_path) -> None:
    out = tmp_path / "generated"
    manifest = generate(
        GenerationRequest(model=str(trained_tiny_model), out=str(out), per_class=2, classes=[0, 10], steps=4,
                          griffin_lim_iters=4, batch_size=3),
        show_progress=False,
    )  # fmt: skip
    rows = list(csv.DictReader(open(manifest)))
    expected = [("dog/0.wav", "0", "dog"), ("dog/1.wav", "0", "dog"), ("rain/0.wav", "10", "rain")]
    expected.append(("rain/1.wav", "10", "rain"))
    assert [(r["file"], r["target"], r["category"]) for r in rows] == expected
    for row in rows:
        info = soundfile.info(out / row["file"])
        assert (info.samplerate, info.channels, info.frames) == (22050, 1, 110250)  # exactly 5.0 s
    assert sorted(p.name for p in out.iterdir()) == ["dog", "generation.json", "manifest.csv", "rain"]  # no temp files
    record = json.loads((out / "generation.json").read_text())  # what made the clips, for evaluation's protocol
    assert record["settings"]["per_class"] == 2 and record["mel"]["resolution"] == 32
    assert record["training"]["clips"] == len(record["training"]["filenames"]) > 0


def test_generation_is_repeatable_with_a_seed(trained_tiny_model, tmp_path) -> None:
    def clip(folder: str, seed: int):
        request = GenerationRequest(model=str(trained_tiny_model), out=str(tmp_path / folder), per_class=1,
                                    classes=[3], steps=3, griffin_lim_iters=2, seed=seed)  # fmt: skip
        generate(request, show_progress=False)
        return soundfile.read(tmp_path / folder / "cow" / "0.wav")[0]

    first, again, other = clip("a", 1), clip("b", 1), clip("c", 2)
    assert (first == again).all() and not (first == other).all()


def test_clips_are_reused_only_for_the_same_weights_and_settings(
    trained_tiny_model, tmp_path, capsys, monkeypatch
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(trained_tiny_model / "model", model)
    request = GenerationRequest(model=str(model), out=str(tmp_path / "out"), per_class=1, classes=[3, 5], steps=2,
                                griffin_lim_iters=2, seed=1)  # fmt: skip
    monkeypatch.setenv("PROGRESS_LOG_SECONDS", "0")  # without a bar, a line at every update here
    generate(request, show_progress=False)
    first = soundfile.read(tmp_path / "out" / "cow" / "0.wav")[0]
    # Progress moves per denoising step, not per batch of clips.
    assert "generating 2 clips: 1/2 steps (50%)" in capsys.readouterr().err
    generate(request, show_progress=False)
    assert "reusing 2 clips in" in capsys.readouterr().out

    weights = model / "unet" / "diffusion_pytorch_model.safetensors"  # a retrained model in the same folder
    tensors = load_file(weights)
    save_file({name: tensor * 1.5 for name, tensor in tensors.items()}, weights, metadata={"format": "pt"})
    generate(dataclasses.replace(request, classes=[3]), show_progress=False)
    said = capsys.readouterr().out
    assert "replacing the 2 clips" in said and "other model weights" in said and "classes [3, 5] -> [3]" in said
    assert not (first == soundfile.read(tmp_path / "out" / "cow" / "0.wav")[0]).all()
    assert not list((tmp_path / "out" / "cat").glob("*.wav"))  # the old clip of class 5 is gone
    assert len(pd.read_csv(tmp_path / "out" / "manifest.csv")) == 1
    with pytest.raises(UserError, match=r"holds clips made differently \(steps 2 -> 3\)"):
        generate(dataclasses.replace(request, classes=[3], steps=3), show_progress=False, existing="refuse")


def test_cli_ends_with_the_clips_folder_and_the_models_run(trained_tiny_model, tmp_path, capsys, monkeypatch):
    from training.generate import main

    store = f"sqlite:///{trained_tiny_model.parent / 'mlflow.db'}"  # where the session's tiny model was trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    main(["--model", str(trained_tiny_model), "--out", str(tmp_path / "o"), "--per-class", "1", "--classes", "0",
          "--steps", "2", "--griffin-lim-iters", "2"])  # fmt: skip
    printed = capsys.readouterr().out
    run_id = json.loads((trained_tiny_model / "model" / "audio.json").read_text())["mlflow_run_id"]
    assert f"clips: {(tmp_path / 'o').resolve()}" in printed
    assert f"the model's MLflow run: {run_id}" in printed and f"-m mlflow ui --backend-store-uri {store}" in printed


def test_generate_from_an_mlflow_run_uri(trained_tiny_model, tmp_path) -> None:
    import mlflow

    run_id = json.loads((trained_tiny_model / "run.json").read_text())["mlflow_run_id"]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{trained_tiny_model.parent / 'mlflow.db'}")
    request = GenerationRequest(model=f"runs:/{run_id}/model", out=str(tmp_path / "g"), per_class=1, classes=[5],
                                steps=2, griffin_lim_iters=2)  # fmt: skip
    try:
        assert generate(request, show_progress=False).is_file()
    finally:
        mlflow.set_tracking_uri(previous)
    assert (tmp_path / "g" / "cat" / "0.wav").is_file()


def test_classes_by_id_or_name_once_each() -> None:
    from core.esc50 import ESC50_CATEGORIES
    from core.generation import resolve_classes

    assert resolve_classes(parse_classes("0,dog, rain,10"), list(ESC50_CATEGORIES)) == [0, 10]
    with pytest.raises(UserError, match="'dragon' is neither a class id 0..49 nor a class of this model"):
        resolve_classes(parse_classes("dragon"), list(ESC50_CATEGORIES))
    assert resolve_classes(parse_classes("beetle,1"), ["bee", "beetle"]) == [1]  # a collection's own names


def test_cli_help_and_bad_model_exit_2(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    helped = subprocess.run([sys.executable, "-m", "training.generate", "--help"], cwd=REPO, capture_output=True,
                            text=True, env=env)  # fmt: skip
    assert helped.returncode == 0 and "--per-class" in helped.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "training.generate", "--model", str(tmp_path), "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert bad.returncode == 2
    assert str(tmp_path) in bad.stderr and bad.stderr.strip().count("\n") == 0


def test_classifier_free_guidance_and_ddpm(tmp_path, tiny_config, trained_tiny_model) -> None:
    from training.train import train

    guided = train(tiny_config("model.class_dropout=0.2", "train.max_steps=2", "train.checkpoint_every=2"),
                   show_progress=False)  # fmt: skip
    request = GenerationRequest(model=str(guided.output_dir), out=str(tmp_path / "g"), per_class=1, classes=[1],
                                scheduler="ddpm", steps=3, guidance_scale=3.0, griffin_lim_iters=2)  # fmt: skip
    generate(request, show_progress=False)
    assert soundfile.info(tmp_path / "g" / "rooster" / "0.wav").frames == 110250
    with pytest.raises(UserError, match="class_dropout"):  # a model without a null class cannot be guided
        unguided = GenerationRequest(model=str(trained_tiny_model), out=str(tmp_path / "h"), per_class=1,
                                     classes=[1], steps=2, guidance_scale=3.0)  # fmt: skip
        generate(unguided, show_progress=False)
