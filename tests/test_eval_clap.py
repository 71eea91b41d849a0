"""CLAP accuracy through the real wrapper and scoring code, with a stand-in model of LAION-CLAP's interface
(the real one needs roberta-base and a checkpoint, which cannot be downloaded here)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile

from core.errors import UserError
from core.esc50 import ESC50_CATEGORIES
from evaluation.clap import CLAP_SAMPLE_RATE, class_prompts, load_clap_model
from evaluation.evaluate import score_generated

TONE_RATE = 22050


def tone_hz(target: int) -> float:
    return 150.0 + 200.0 * target  # class c is a tone in the c-th 200 Hz band


class ToneClap:
    """Answers like LAION-CLAP's `CLAP_Module`: a text embedding per prompt, an audio embedding per clip.

    Audio -> energy in 50 frequency bands (band c around class c's tone); prompt -> the one-hot vector
    of the class it names. So a tone of class c is most similar to class c's prompt.
    """

    def __init__(self):
        self.texts: list[str] = []
        self.audio_shapes: list[tuple[int, ...]] = []

    def get_text_embedding(self, texts, use_tensor=False):
        self.texts = list(texts)
        names = [name.replace("_", " ") for name in ESC50_CATEGORIES]
        # the longest class name found in the prompt ("water drops" rather than "rain" in "rain ... water drops")
        found = [max((n for n in names if n in text), key=len) for text in texts]
        return np.eye(len(names))[[names.index(name) for name in found]]

    def get_audio_embedding_from_data(self, x, use_tensor=False):
        assert isinstance(x, np.ndarray) and x.dtype == np.float32 and not use_tensor
        self.audio_shapes.append(x.shape)
        spectrum = np.abs(np.fft.rfft(x, axis=1)) ** 2
        frequencies = np.fft.rfftfreq(x.shape[1], 1 / CLAP_SAMPLE_RATE)
        band = np.clip(((frequencies - 50.0) // 200.0).astype(int), 0, len(ESC50_CATEGORIES) - 1)
        energy = np.stack([spectrum[:, band == c].sum(axis=1) for c in range(len(ESC50_CATEGORIES))], axis=1)
        return np.sqrt(energy)


def write_tones(folder: Path, classes: list[int], labels: list[int]) -> Path:
    """One 1-second tone per entry of `classes`, listed in manifest.csv under the class in `labels`."""
    folder.mkdir(parents=True, exist_ok=True)
    time = np.arange(TONE_RATE) / TONE_RATE
    rows = []
    for i, (tone_class, label) in enumerate(zip(classes, labels)):
        relative = f"{ESC50_CATEGORIES[label]}/{i}.wav"
        (folder / relative).parent.mkdir(exist_ok=True)
        soundfile.write(folder / relative, 0.5 * np.sin(2 * np.pi * tone_hz(tone_class) * time), TONE_RATE)
        rows.append({"file": relative, "target": label, "category": ESC50_CATEGORIES[label]})
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "target", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


PROTOCOL = {"trained_on": [], "bootstrap": 0}  # tones: a "generator" that heard no real clip; no intervals


def test_zero_shot_accuracy_through_the_scoring_code(tmp_path, esc50_mini):
    # Not 35 (can_opening): esc50-mini holds one recording of it, so the protocol has no ceiling for it.
    classes = [c for c in range(0, 50, 5) if c != 35]
    model = ToneClap()
    right = write_tones(tmp_path / "right", classes, classes)
    metrics = score_generated(right, str(esc50_mini), ["clap"], clap_model=model, show_progress=False, **PROTOCOL)
    assert metrics == {"ca_top1": 1.0, "ca_top5": 1.0, "ca_top10": 1.0, "ca_map10": 1.0}
    # Every clip went through at 48 kHz and 5.0 s (1-second files padded), in batches.
    assert sum(shape[0] for shape in model.audio_shapes) == len(classes)
    assert {shape[1] for shape in model.audio_shapes} == {5 * CLAP_SAMPLE_RATE}
    assert model.texts[0] == "This is a sound of dog." and model.texts[11] == "This is a sound of sea waves."

    # Labels that name a class one band away: never first, always within the top 10.
    shifted = write_tones(tmp_path / "shifted", classes, [c + 1 for c in classes])
    metrics = score_generated(
        shifted, str(esc50_mini), ["clap"], clap_model=ToneClap(), show_progress=False, **PROTOCOL
    )
    assert metrics["ca_top1"] == 0.0 and metrics["ca_top10"] == 1.0
    assert 0.1 <= metrics["ca_map10"] <= 0.5


def test_prompt_template_is_configurable_and_checked(tmp_path, esc50_mini):
    model = ToneClap()
    folder = write_tones(tmp_path / "clips", [3, 7], [3, 7])
    score_generated(
        folder,
        str(esc50_mini),
        ["clap"],
        clap_model=model,
        clap_template="a recording of {category}",
        show_progress=False,
        **PROTOCOL,
    )
    assert model.texts[:2] == ["a recording of dog", "a recording of rooster"] and len(model.texts) == 50
    with pytest.raises(UserError, match="must contain {category}"):
        class_prompts("a dog barking")


def test_missing_clap_checkpoint_names_the_file(tmp_path):
    with pytest.raises(UserError, match=r"CLAP checkpoint .*music_speech_audioset_epoch_15_esc_89.98.pt not found"):
        load_clap_model("music_speech_audioset", tmp_path)
    with pytest.raises(UserError, match="neither a checkpoint file nor one of"):
        load_clap_model("no-such-model", tmp_path)


@pytest.mark.slow
def test_clap_without_roberta_offline_names_the_cache(tmp_path):
    checkpoint = tmp_path / "630k-audioset-best.pt"
    checkpoint.write_bytes(b"placeholder")  # a file is there: the text encoder (roberta-base) is what is missing
    with pytest.raises(UserError, match=r"roberta-base .* Hugging Face cache|cannot load CLAP checkpoint"):
        load_clap_model(str(checkpoint), tmp_path, device="cpu")
