"""Bad audio: each case fixed (resampled, downmixed, padded, trimmed) or rejected naming the file."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core.audio import BadAudioError, MelSettings, MelTransform, decode_audio
from core.config import DataConfig
from core.errors import UserError
from core.spectrograms import build_spectrogram_cache
from tests.reliability.conftest import copy_esc50

RATE, SECONDS = 22050, 5.0
LENGTH = int(RATE * SECONDS)


def tone(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


def wav_bytes(samples: np.ndarray, rate: int = RATE, subtype: str = "FLOAT", fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, subtype=subtype, format=fmt)
    return buffer.getvalue()


def test_stereo_is_downmixed():
    left, right = tone(5.0), tone(5.0)[::-1].copy()
    decoded = decode_audio(wav_bytes(np.stack([left, right], axis=1)), RATE, SECONDS, name="stereo.wav")
    np.testing.assert_allclose(decoded, (left + right) / 2, atol=1e-6)


def test_8_khz_is_resampled_to_the_configured_rate():
    decoded = decode_audio(wav_bytes(tone(5.0, rate=8000), rate=8000), RATE, SECONDS, name="8k.wav")
    assert decoded.shape == (LENGTH,)
    spectrum = np.abs(np.fft.rfft(decoded))
    assert abs(np.argmax(spectrum) * RATE / LENGTH - 440) < 2  # the same tone, at the new rate


def test_short_clip_is_padded_with_silence_and_long_clip_trimmed():
    short = decode_audio(wav_bytes(tone(1.0)), RATE, SECONDS, name="short.wav")
    assert short.shape == (LENGTH,) and np.any(short[:RATE]) and not np.any(short[RATE:])
    long = decode_audio(wav_bytes(tone(7.0)), RATE, SECONDS, name="long.wav")
    np.testing.assert_array_equal(long, tone(7.0)[:LENGTH])


REJECTED = {
    "empty.wav": (lambda real: b"", "cannot decode"),
    "no_samples.wav": (lambda real: wav_bytes(np.zeros(0, np.float32)), "is empty (0 samples)"),
    "not_audio.flac": (lambda real: b"filename,fold,target\nthis is a CSV, not audio\n" * 20, "cannot decode"),
    "truncated.flac": (lambda real: real[: len(real) // 2], "cannot decode"),
    "truncated.wav": (lambda real: wav_bytes(tone(5.0), subtype="PCM_16")[:50_000], "is truncated"),
    "nan.wav": (lambda real: wav_bytes(np.where(np.arange(LENGTH) == 99, np.nan, tone(5.0))), "NaN or infinite"),
    "inf.wav": (lambda real: wav_bytes(np.where(np.arange(LENGTH) == 9, np.inf, tone(5.0))), "NaN or infinite"),
    "silence.wav": (lambda real: wav_bytes(np.zeros(LENGTH, np.float32)), "pure silence"),
}


@pytest.fixture(scope="module")
def real_flac(esc50_mini) -> bytes:
    return sorted((esc50_mini / "audio").glob("*.flac"))[0].read_bytes()


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_bad_file_is_rejected_naming_it(name, real_flac, tmp_path):
    make, reason = REJECTED[name]
    path = tmp_path / name
    path.write_bytes(make(real_flac))
    with pytest.raises(BadAudioError) as error:
        decode_audio(path, RATE, SECONDS)
    assert str(path) in str(error.value) and reason in str(error.value)
    assert "\n" not in str(error.value)


def test_one_scan_reports_every_bad_file_and_warns_about_unlisted_ones(esc50_mini, real_flac, tmp_path, caplog):
    """A dataset with good clips, five bad ones and an unlisted one: one error naming all five, before training."""
    source = tmp_path / "esc50"
    table = copy_esc50(esc50_mini, source, clips=4)
    bad = ["empty.wav", "not_audio.flac", "truncated.flac", "nan.wav", "silence.wav"]
    rows = []
    for name in bad:
        (source / "audio" / name).write_bytes(REJECTED[name][0](real_flac))
        rows.append({**table.iloc[0].to_dict(), "filename": name})
    pd.concat([table, pd.DataFrame(rows)]).to_csv(source / "meta" / "esc50.csv", index=False)
    (source / "audio" / "stray.wav").write_bytes(wav_bytes(tone(5.0)))

    data = DataConfig(source=str(source), resolution=32, cache_dir=str(tmp_path / "cache"), preprocess_workers=1)
    with caplog.at_level(logging.WARNING), pytest.raises(UserError) as error:
        build_spectrogram_cache(data, show_progress=False)
    message = str(error.value)
    assert message.startswith(f"5 bad audio file(s) in {source}")
    assert all(name in message for name in bad)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir()), "a bad scan was cached"
    assert "stray.wav" in caplog.text and "not listed" in caplog.text


MEL = MelTransform(MelSettings(sample_rate=8000, clip_seconds=0.5, resolution=16))
samples = arrays(
    np.float32,
    st.integers(0, 6000),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True) | st.floats(-1, 1, width=32),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=samples, rate=st.sampled_from([4000, 8000, 11025, 44100]))
@example(samples=np.full(4000, 3.32307e35, dtype=np.float32), rate=4000)  # found by hypothesis: soxr overflowed to inf
def test_any_samples_decode_to_a_finite_spectrogram_or_a_clear_error(samples, rate):
    """Whatever a float WAV holds (NaN, inf, 1e38, nothing), decoding then the mel transform never crashes."""
    data = wav_bytes(samples, rate=rate) if samples.size else b""
    try:
        decoded = decode_audio(data, 8000, 0.5, name="prop.wav")
    except BadAudioError as error:
        assert "prop.wav" in str(error)
        return
    assert decoded.shape == (4000,) and np.isfinite(decoded).all()
    spectrogram = MEL.spectrogram(decoded)
    assert spectrogram.shape == (16, 16) and np.isfinite(spectrogram).all()
    assert spectrogram.min() >= 0.0 and spectrogram.max() <= 1.0


@settings(max_examples=60, deadline=None)
@given(samples=samples)
def test_mel_transform_gives_finite_output_in_range_or_a_clear_error(samples):
    try:
        spectrogram = MEL.spectrogram(samples)
    except BadAudioError as error:
        assert "NaN or infinite" in str(error)
        assert not np.isfinite(samples).all()
        return
    assert np.isfinite(spectrogram).all() and spectrogram.min() >= 0.0 and spectrogram.max() <= 1.0


def test_out_of_range_amplitude_gives_the_same_spectrogram_as_full_scale():
    clip = tone(0.5, rate=8000)
    np.testing.assert_allclose(MEL.spectrogram(clip * 1e30), MEL.spectrogram(clip / np.abs(clip).max()), atol=1e-5)


def test_a_good_file_decodes_to_the_configured_length(tmp_path: Path):
    # The counterpart of the rejections above: the same writer, a sound clip, accepted.
    path = tmp_path / "fine.wav"
    path.write_bytes(wav_bytes(tone(5.0)))
    assert decode_audio(path, RATE, SECONDS).shape == (LENGTH,)
