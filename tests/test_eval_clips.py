"""Reading the clips to score: manifests, the reference/held-out split, decoding without dropping a clip."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile

from core.errors import UserError
from evaluation.clips import decoded_batches, fingerprint, read_manifest


def write_clip(path, seconds=1.0, rate=16000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.random.default_rng(seed).uniform(-0.5, 0.5, int(rate * seconds)), rate)


def test_manifest_is_read_and_validated(tmp_path):
    write_clip(tmp_path / "dog" / "0.wav")
    write_clip(tmp_path / "rain" / "0.wav")
    (tmp_path / "manifest.csv").write_text("file,target,category\ndog/0.wav,0,dog\nrain/0.wav,10,rain\n")
    table = read_manifest(tmp_path)
    assert table["target"].tolist() == [0, 10]
    assert table["source"].tolist() == [str(tmp_path / "dog/0.wav"), str(tmp_path / "rain/0.wav")]

    cases = {
        "file,target\ndog/0.wav,0\n": "lacks column",
        "file,target,category\ndog/0.wav,50,dog\n": "target '50' of dog/0.wav is not a class id",
        "file,target,category\ndog/0.wav,1,dog\n": "category 'dog' of dog/0.wav does not match target 1",
        "file,target,category\ndog/1.wav,0,dog\n": "1 clip.* missing: dog/1.wav",
        "file,target,category\n": "lists no clips",
    }
    for text, message in cases.items():
        (tmp_path / "manifest.csv").write_text(text)
        with pytest.raises(UserError, match=message):
            read_manifest(tmp_path)
    with pytest.raises(UserError, match="manifest.csv not found"):
        read_manifest(tmp_path / "nowhere")


def test_clips_are_decoded_at_equal_length_and_a_bad_clip_stops_everything(tmp_path):
    for i, seconds in enumerate([0.5, 7.0, 5.0]):  # shorter, longer, exact
        write_clip(tmp_path / f"{i}.wav", seconds, rate=44100, seed=i)
    (tmp_path / "manifest.csv").write_text("file,target,category\n0.wav,0,dog\n1.wav,0,dog\n2.wav,0,dog\n")
    batches = list(decoded_batches(read_manifest(tmp_path), 16000, batch_size=2, show_progress=False))
    assert [b.shape for b in batches] == [(2, 80000), (1, 80000)]

    (tmp_path / "1.wav").write_bytes(b"RIFF not really a wav")
    soundfile.write(tmp_path / "2.wav", np.zeros(100), 16000)  # pure silence is rejected too
    table = read_manifest(tmp_path)
    yielded = []
    with pytest.raises(UserError, match=r"2 of 3 clips could not be read \(not scoring a partial set\).*1.wav.*2.wav"):
        for batch in decoded_batches(table, 16000, batch_size=1, show_progress=False):
            yielded.append(batch)
    assert len(yielded) == 1  # the clip before the first bad one, nothing after it


def test_fingerprint_changes_when_a_clip_changes(tmp_path):
    write_clip(tmp_path / "a.wav")
    (tmp_path / "manifest.csv").write_text("file,target,category\na.wav,0,dog\n")
    before = fingerprint(read_manifest(tmp_path))
    assert fingerprint(read_manifest(tmp_path)) == before
    write_clip(tmp_path / "a.wav", seconds=1.5)
    os.utime(tmp_path / "a.wav", ns=(1, 1))
    assert fingerprint(read_manifest(tmp_path)) != before
