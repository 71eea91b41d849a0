"""A collection of one's own in ESC-50's layout: its class set, one complete report of its problems, end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from core.config import DataConfig, load_config
from core.esc50 import DataProblems, read_clips
from core.spectrograms import build_spectrogram_cache
from tests.conftest import TINY_CONFIG

CLASSES = ["bee", "beetle", "cricket_song", "frog_call"]
RATES = (16000, 24000, 44100, 48000)


def _clip(target: int, index: int) -> tuple[np.ndarray, int]:
    """A tone per class (so a scorer has something to learn), at mixed rates, lengths and channel counts."""
    rate = RATES[index % 4]
    seconds = (3.0, 5.0, 6.0)[index % 3]
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (300 + 500 * target + 40 * index) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    tone = tone.astype(np.float32)
    return (np.stack([tone, tone * 0.8], axis=1) if index % 2 else tone), rate


def make_collection(root: Path, per_class: int = 6) -> pd.DataFrame:
    """A clean collection: 4 classes of its own, 6 clips each, every clip its own recording."""
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = []
    for target, name in enumerate(CLASSES):
        for index in range(per_class):
            filename = f"{index % 5 + 1}-{100 + target}-{'ABCDEF'[index]}-{target}.wav"
            samples, rate = _clip(target, index)
            soundfile.write(root / "audio" / filename, samples, rate)
            rows.append({"filename": filename, "fold": index % 5 + 1, "target": target, "category": name})
    table = pd.DataFrame(rows)
    table.to_csv(root / "meta" / "esc50.csv", index=False)
    return table


def break_collection(root: Path, table: pd.DataFrame) -> dict[str, str]:
    """Every kind of problem the scan must name, at once; returns what each one's message must mention."""
    typo_source = table.iloc[2]["filename"]  # the CSV names it "<stem> wav": a typo'd row, the file unlisted
    soundfile.write(root / "audio" / "stray.wav", np.zeros(1600, np.float32) + 0.1, 16000)
    (root / "audio" / "broken.wav").write_bytes(b"RIFF....not audio at all")
    bad = table.copy()
    bad.loc[2, "filename"] = typo_source.replace(".wav", " wav")
    bad.loc[7, "category"] = "beatle"  # target 1 with a second name
    extra = pd.DataFrame([
        {"filename": "ghost.wav", "fold": 1, "target": 0, "category": "bee"},  # absent
        {"filename": "broken.wav", "fold": 1, "target": 3, "category": "frog_call"},  # unreadable
        table.iloc[5].to_dict(),  # a duplicate row
        {"filename": table.iloc[9]["filename"], "fold": 2, "target": 6, "category": "owl"},  # a gap: no 4, 5
    ])  # fmt: skip
    pd.concat([bad, extra]).to_csv(root / "meta" / "esc50.csv", index=False)
    return {
        "typo": f"did you mean {typo_source}?",
        "absent": "ghost.wav is listed but missing",
        "two names": "target 1 of",
        "duplicate": "is listed more than once",
        "gap": "without gaps: none is [4, 5]",
        "unreadable": "broken.wav",
    }


def test_one_scan_names_every_problem_of_a_broken_collection_and_caches_nothing(tmp_path):
    source = tmp_path / "bugs"
    expected = break_collection(source, make_collection(source))
    data = DataConfig(source=str(source), resolution=16, cache_dir=str(tmp_path / "cache"), preprocess_workers=1)
    with pytest.raises(DataProblems) as error:
        build_spectrogram_cache(data, show_progress=False)
    everything = " | ".join(str(p) for p in error.value.problems)
    for kind, text in expected.items():
        assert text in everything, (kind, everything)
    assert all(p.line >= 2 for p in error.value.problems if "gap" not in p.message)  # each with its CSV line
    assert "\n" not in str(error.value) and "cannot be skipped" in str(error.value)  # the gap: see below
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*/dataset_info.json"))
    # The gap belongs to no row: leaving rows out cannot fix it, so skip_bad still stops.
    with pytest.raises(DataProblems, match="without gaps"):
        build_spectrogram_cache(DataConfig(**{**data.__dict__, "skip_bad": True}), show_progress=False)


def test_esc50_itself_stays_as_strict_as_before(esc50_mini, tmp_path):
    """A typo in one of ESC-50's names is an error, not a new class set (the existing metadata tests too)."""
    table = pd.read_csv(esc50_mini / "meta" / "esc50.csv")
    table.loc[3, "category"] = "doggo"
    (tmp_path / "meta").mkdir()
    (tmp_path / "audio").symlink_to(esc50_mini / "audio")
    table.to_csv(tmp_path / "meta" / "esc50.csv", index=False)
    with pytest.raises(DataProblems, match=r"unknown class 'doggo' for target \d+ of .* \(ESC-50 calls target"):
        read_clips(str(tmp_path))


@pytest.mark.slow
def test_a_collection_of_its_own_trains_generates_by_name_and_is_evaluated(tmp_path, caplog):
    import mlflow

    from core.diffusion.model import DiffusionModel
    from core.generation import GenerationRequest, generate
    from evaluation.evaluate import EvaluationRequest, evaluate
    from evaluation.scoring import EvalOptions
    from training.train import train

    source = tmp_path / "insects"
    table = make_collection(source)
    (source / "audio" / "broken.wav").write_bytes(b"RIFF....not audio at all")
    with_bad_row = pd.concat([table, pd.DataFrame([{"filename": "broken.wav", "fold": 1, "target": 3,
                                                    "category": "frog_call"}])])  # fmt: skip
    with_bad_row.to_csv(source / "meta" / "esc50.csv", index=False)
    config = load_config(
        TINY_CONFIG,
        [f"output_dir={tmp_path / 'run'}", f"data.source={source}", f"data.cache_dir={tmp_path / 'cache'}",
         f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "data.skip_bad=true", "data.resolution=16",
         "data.holdout_recordings=2", "model.block_channels=[8,16]", "train.max_steps=2", "train.batch_size=4",
         "train.checkpoint_every=2", "sample.steps=2", "sample.griffin_lim_iters=2"],
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        result = train(config, show_progress=False)
    summary = caplog.text
    assert "resampled from 16 kHz" in summary and "averaged to mono" in summary and "padded with silence" in summary
    assert "trimmed" in summary
    # tiny.yaml's sample classes (0, 10, 19, 40, 42) mostly do not exist here: what is sampled instead is said.
    assert "does not fit the 4 classes of data.source; sampling [0]" in summary
    # The cache of this skip_bad run lacks broken.wav: without skip_bad it is a problem again, not reused silently.
    import dataclasses

    with pytest.raises(DataProblems, match="broken.wav"):
        build_spectrogram_cache(dataclasses.replace(config.data, skip_bad=False), show_progress=False)
    model = DiffusionModel.load(result.model_dir)
    assert model.categories == CLASSES and model.unet.config.num_class_embeds == 4
    client = mlflow.tracking.MlflowClient(config.tracking.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.metrics["data/skipped_rows"] == 1
    assert "data_skipped.csv" in {a.path for a in client.list_artifacts(result.run_id)}
    assert (Path(result.output_dir) / "samples" / "final" / "bee.wav").is_file()  # named by the data's class

    generated = tmp_path / "by-name"
    generate(GenerationRequest(model=str(result.model_dir), out=str(generated), per_class=1,
                               classes=["beetle", "frog_call"], steps=2), show_progress=False)  # fmt: skip
    assert sorted(p.parent.name for p in generated.glob("*/0.wav")) == ["beetle", "frog_call"]

    outcome = evaluate(
        EvaluationRequest(
            model=str(result.model_dir), reference=str(source), metrics=["esc"], out=str(tmp_path / "evaluation"),
            generation={"per_class": 2, "steps": 2}, cache_dir=str(tmp_path / "eval-cache"), mlflow=False,
            options=EvalOptions(bootstrap=0, skip_bad=True, scorer_epochs=3),
        ),
        show_progress=False,
    )  # fmt: skip
    assert {"fd_esc", "esc_top1", "real_esc_top1"} <= set(outcome.metrics)
    protocol = json.loads((tmp_path / "evaluation" / "protocol.json").read_text())
    assert protocol["evaluation.class_set"] == "4 classes of the reference's own"
    per_class = pd.read_csv(tmp_path / "evaluation" / "per_class.csv")
    assert set(per_class["category"]) <= set(CLASSES)
    from evaluation.evaluate import score_real  # real clips alone (a sweep's ceiling): no generator to compare

    real = score_real(str(source), ["esc"], trained_on=[], skip_bad=True, bootstrap=0, scorer_epochs=3,
                      cache_dir=str(tmp_path / "eval-cache"), show_progress=False)  # fmt: skip
    assert "esc_top1" in real
    # Another collection's clips are not scored against ESC-50 (the class sets differ): refused, naming both.
    from core.errors import UserError

    with pytest.raises(UserError, match="the generator's 4 classes .* are not the 50 classes of --reference"):
        evaluate(EvaluationRequest(generated=str(tmp_path / "evaluation" / "generated"), metrics=["esc"],
                                   mlflow=False, out=str(tmp_path / "wrong")), show_progress=False)  # fmt: skip


def test_negative_targets_nested_file_names_and_an_emptied_class(tmp_path):
    from core.errors import UserError
    from core.esc50 import class_names, scan_source

    source = tmp_path / "nested"
    table = make_collection(source, per_class=2)
    (source / "audio" / "sub").mkdir()
    soundfile.write(source / "audio" / "sub" / "x.wav", np.full(8000, 0.1, np.float32), 16000)
    extra = pd.DataFrame([{"filename": "sub/x.wav", "fold": 1, "target": 0, "category": "bee"},
                          {"filename": table.iloc[0]["filename"].replace("-0.", "-9."), "fold": 1, "target": -1,
                           "category": "bee"}])  # fmt: skip
    pd.concat([table, extra]).to_csv(source / "meta" / "esc50.csv", index=False)
    _, problems, _ = scan_source(str(source))
    messages = [p.message for p in problems]
    assert not any("sub/x.wav" in m for m in messages)  # a file in a sub-folder of audio/ is found
    assert any("column 'target' is negative" in m for m in messages), messages
    emptied = table[table["target"] != 2]  # skip_bad left no row of class 2
    with pytest.raises(UserError, match="class target 2 has no usable clips left"):
        class_names(emptied)


def test_a_preset_set_in_the_yaml_alone_applies(tmp_path):
    from core.spectrograms import mel_settings

    path = tmp_path / "preset.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\ndata:\n  preset: audioldm\n")
    mel = mel_settings(load_config(path).data)
    assert (mel.sample_rate, mel.n_mels, mel.hop_length, mel.n_frames) == (16000, 64, 160, 512)
