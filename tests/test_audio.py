"""Decoding clips and the log-mel transform with its Griffin-Lim inverse."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from core.audio import BadAudioError, MelSettings, MelTransform, decode_audio, write_wav_atomic


def _chirp(seconds: float = 5.0, rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    tone = np.sin(2 * np.pi * (200 + 300 * t) * t) * (0.5 + 0.4 * np.sin(2 * np.pi * 0.7 * t))
    return tone.astype(np.float32)


def test_hop_gives_exactly_resolution_frames_over_the_whole_clip() -> None:
    for resolution in (32, 64, 128, 256):
        settings = MelSettings(resolution=resolution)
        frames = 1 + settings.clip_samples // settings.hop_length
        assert frames == resolution  # librosa's centred frame count
        assert settings.hop_length * (resolution - 1) < settings.clip_samples <= settings.hop_length * resolution
        assert settings.window_length >= 2 * settings.hop_length


def test_spectrogram_shape_range_and_end_of_clip_is_covered() -> None:
    transform = MelTransform(MelSettings(resolution=64))
    clip = np.zeros(5 * 22050, np.float32)
    clip[-22050:] = _chirp(1.0)  # sound only in the last second
    spectrogram = transform.spectrogram(clip)
    assert spectrogram.shape == (64, 64)
    assert 0.0 <= spectrogram.min() and spectrogram.max() <= 1.0
    # The last frames see the sound: a transform that kept only the first 2.97 s would not.
    assert spectrogram[:, -8:].max(axis=0).min() > 0.5
    assert spectrogram[:, :8].max() < 0.1


@pytest.mark.parametrize("resolution", [32, 64])
def test_spectrogram_equals_librosas_log_mel(esc50_mini, resolution: int) -> None:
    """The torch STFT path computes what librosa's melspectrogram + power_to_db(ref=max) would."""
    import librosa

    settings = MelSettings(resolution=resolution)
    clips = np.stack(_real_clips(esc50_mini, 3) + [_chirp()])
    ours = MelTransform(settings).spectrogram(clips)
    for clip, spectrogram in zip(clips, ours):
        mel = librosa.feature.melspectrogram(
            y=clip, sr=settings.sample_rate, n_fft=settings.window_length, hop_length=settings.hop_length,
            n_mels=resolution, power=2.0,
        )[:, :resolution]  # fmt: skip
        db = librosa.power_to_db(mel, ref=np.max, top_db=settings.top_db)
        reference = (db + settings.top_db) / settings.top_db
        assert spectrogram.shape == reference.shape == (resolution, resolution)
        np.testing.assert_allclose(spectrogram, reference, atol=1e-5)


def _spectral_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def _real_clips(esc50_mini, count: int) -> list[np.ndarray]:
    paths = sorted((esc50_mini / "audio").glob("*.flac"))[::37][:count]
    return [decode_audio(path, 22050, 5.0) for path in paths]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_inversion_round_trip_beats_a_broken_transform(esc50_mini, index: int) -> None:
    settings = MelSettings(resolution=64)
    transform = MelTransform(settings)
    original = transform.spectrogram(_real_clips(esc50_mini, 3)[index])
    clip = transform.audio(original, iterations=32)
    assert clip.shape == (settings.clip_samples,)  # exactly 5.0 s
    round_trip_error = _spectral_error(transform.spectrogram(clip), original)
    # An inverse that assumes other STFT settings (here another sample rate, so another hop
    # and filter bank: a classic inconsistency) lands far off.
    broken = MelTransform(MelSettings(resolution=64, sample_rate=16000))
    broken_error = _spectral_error(transform.spectrogram(broken.audio(original, iterations=32)), original)
    unrelated_error = _spectral_error(transform.spectrogram(np.random.default_rng(0).normal(size=clip.shape)), original)
    assert round_trip_error < 0.06
    assert round_trip_error < 0.5 * broken_error
    assert round_trip_error < 0.3 * unrelated_error


def test_batched_inversion_is_as_good_as_one_by_one_and_seeded(esc50_mini) -> None:
    transform = MelTransform(MelSettings(resolution=32))
    batch = np.stack([transform.spectrogram(clip) for clip in _real_clips(esc50_mini, 2)])
    together = transform.audio(batch, iterations=16, seed=3)
    assert together.shape == (2, transform.settings.clip_samples)
    np.testing.assert_array_equal(together, transform.audio(batch, iterations=16, seed=3))  # repeatable
    for spectrogram, clip in zip(batch, together):
        alone = transform.audio(spectrogram, iterations=16, seed=3)
        batched_error = _spectral_error(transform.spectrogram(clip), spectrogram)
        assert batched_error < 0.06
        assert batched_error < 1.5 * _spectral_error(transform.spectrogram(alone), spectrogram) + 0.01


def test_decode_resamples_downmixes_and_fixes_length(tmp_path) -> None:
    stereo_8k = np.stack([_chirp(3.0, 8000), _chirp(3.0, 8000)], axis=1)
    path = tmp_path / "short_stereo.wav"
    soundfile.write(path, stereo_8k, 8000)
    samples = decode_audio(path, sample_rate=22050, seconds=5.0)
    assert samples.shape == (5 * 22050,) and samples.dtype == np.float32
    assert np.abs(samples[: 2 * 22050]).max() > 0.1 and not samples[-22050:].any()  # padded with silence


def test_real_esc50_flac_is_resampled_from_44k(esc50_mini) -> None:
    path = next((esc50_mini / "audio").glob("*.flac"))
    assert soundfile.info(path).samplerate == 44100
    assert decode_audio(path, sample_rate=22050, seconds=5.0).shape == (110250,)


def _libsndfile_float_decode(source, rate: int = 22050) -> np.ndarray:
    """What decode_audio did before its fast paths: libsndfile's float32 samples, averaged, soxr HQ."""
    import io

    import soxr

    samples, native_rate = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32",
                                          always_2d=True)  # fmt: skip
    resampled = soxr.resample(samples.mean(axis=1), native_rate, rate, quality="HQ").astype(np.float32)
    return np.pad(resampled, (0, max(0, 5 * rate - len(resampled))))[: 5 * rate]


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
@pytest.mark.parametrize("channels", [1, 2])
def test_fast_16_bit_paths_give_libsndfiles_float_samples(tmp_path, esc50_mini, subtype: str, channels: int) -> None:
    """16-bit FLAC (dr_flac) and 16-bit WAV (read as int16) decode to exactly libsndfile's float samples;
    24-bit files take libsndfile's float path."""
    from core.audio import _read_16_bit_flac

    real, rate = soundfile.read(sorted((esc50_mini / "audio").glob("*.flac"))[3], dtype="float32")
    samples = np.stack([real, real[::-1]], axis=1)[:, :channels]
    for fmt in ("FLAC", "WAV"):
        path = tmp_path / f"clip-{channels}.{fmt.lower()}"
        soundfile.write(path, samples, rate, subtype=subtype, format=fmt)
        np.testing.assert_array_equal(decode_audio(path, 22050, 5.0), _libsndfile_float_decode(path))
        np.testing.assert_array_equal(decode_audio(path.read_bytes(), 22050, 5.0), _libsndfile_float_decode(path))
        for source in (path, path.read_bytes()):
            fast = _read_16_bit_flac(source)
            assert (fast is not None) == (fmt == "FLAC" and subtype == "PCM_16"), (fmt, subtype)
            if fast is not None:  # every channel, before any mixing: exactly libsndfile's float samples
                np.testing.assert_array_equal(fast[0], soundfile.read(path, dtype="float32", always_2d=True)[0])
                assert fast[0].dtype == np.float32 and fast[1] == rate


def test_flac_that_dr_flac_decodes_only_in_part_is_rejected_by_libsndfile(tmp_path, esc50_mini) -> None:
    """dr_flac skips frames that fail their checksum; such a file must not pass as a shorter clip."""
    from core.audio import _read_16_bit_flac

    data = bytearray(sorted((esc50_mini / "audio").glob("*.flac"))[0].read_bytes())
    data[len(data) // 2 : len(data) // 2 + 100] = b"x" * 100  # a damaged frame in the middle
    path = tmp_path / "damaged.flac"
    path.write_bytes(bytes(data))
    assert _read_16_bit_flac(path) is None  # dr_flac alone would have returned fewer samples
    with pytest.raises(BadAudioError, match=r"cannot decode audio file .*damaged\.flac"):
        decode_audio(path, 22050, 5.0)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "cannot decode"), (b"not audio at all" * 10, "cannot decode")],
)
def test_unreadable_files_are_rejected_by_name(tmp_path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(BadAudioError, match=rf"{reason}.*bad\.wav"):
        decode_audio(path, 22050, 5.0)


def test_silence_and_nan_are_rejected(tmp_path) -> None:
    silent, nan = tmp_path / "silent.wav", tmp_path / "nan.wav"
    soundfile.write(silent, np.zeros(22050, np.float32), 22050)
    soundfile.write(nan, np.full(22050, np.nan, np.float32), 22050, subtype="FLOAT")
    with pytest.raises(BadAudioError, match="silent.wav is pure silence"):
        decode_audio(silent, 22050, 5.0)
    with pytest.raises(BadAudioError, match="nan.wav contains NaN"):
        decode_audio(nan, 22050, 5.0)


def test_wav_is_written_atomically(tmp_path) -> None:
    write_wav_atomic(tmp_path / "a" / "clip.wav", _chirp(1.0), 22050)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["clip.wav"]
    assert soundfile.info(tmp_path / "a" / "clip.wav").duration == pytest.approx(1.0)
