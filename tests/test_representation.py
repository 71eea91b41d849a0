"""The representation and its vocoders: mel bins and frames apart, the level, Griffin-Lim's momentum, HiFi-GAN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from core.audio import MelSettings, MelTransform
from core.config import load_config
from core.errors import UserError
from tests.conftest import REPO, TINY_CONFIG


def test_resolution_only_settings_mean_what_they_meant():
    """Earlier caches and models: the same JSON (cache keys), the same hop and window rule."""
    settings = MelSettings(resolution=64)
    old_keys = {"clip_seconds": 5.0, "n_fft": 0, "resolution": 64, "sample_rate": 22050, "top_db": 80.0}
    assert settings.to_json() == json.dumps(old_keys, sort_keys=True)
    assert (settings.shape, settings.hop_length, settings.window_length) == ((64, 64), 1723, 4096)
    assert MelSettings.from_json(settings.to_json()) == settings


def test_mel_bins_and_frames_apart_cover_the_clip_with_four_hop_windows():
    settings = MelSettings(mel_bins=64, frames=256)
    assert settings.shape == (64, 256) and settings.hop_length == 431  # ~20 ms at 22,050 Hz
    assert settings.hop_length * settings.n_frames >= settings.clip_samples
    assert settings.window_length == 2048  # 4 hops (1,724) to the nearest power of two
    clip = np.random.default_rng(0).normal(0, 0.1, settings.clip_samples).astype(np.float32)
    transform = MelTransform(settings)
    spectrogram = transform.spectrogram(clip)
    assert spectrogram.shape == (64, 256) and 0 <= spectrogram.min() and spectrogram.max() <= 1
    assert transform.audio(spectrogram, iterations=2).shape == (settings.clip_samples,)


def _tone(amplitude: float, settings: MelSettings) -> np.ndarray:
    t = np.arange(settings.clip_samples) / settings.sample_rate
    return (amplitude * np.sin(2 * np.pi * 440 * t) * np.linspace(0.2, 1, t.size)).astype(np.float32)


def test_a_fixed_level_keeps_loudness_in_the_data_and_in_the_audio_peak_does_not():
    fixed, peak = MelSettings(resolution=32, level="fixed"), MelSettings(resolution=32)
    loud, quiet = _tone(0.2, fixed), _tone(0.1, fixed)
    by_peak = MelTransform(peak)
    np.testing.assert_allclose(by_peak.spectrogram(loud), by_peak.spectrogram(quiet), atol=1e-5)
    by_fixed = MelTransform(fixed)
    loud_spec, quiet_spec = by_fixed.spectrogram(loud), by_fixed.spectrogram(quiet)
    audible = (quiet_spec > 0.05) & (loud_spec < 0.99)  # neither at the floor nor at the ceiling
    shift = (loud_spec - quiet_spec)[audible] * fixed.top_db
    np.testing.assert_allclose(shift, 20 * np.log10(2), atol=0.05)  # half the amplitude: 6.02 dB lower
    loud_back, quiet_back = by_fixed.audio(np.stack([loud_spec, quiet_spec]), iterations=16)
    middle = slice(len(loud) // 10, -len(loud) // 10)  # Griffin-Lim's edges are noisy: levels from the middle

    def rms(clip: np.ndarray) -> float:
        return float(np.sqrt(np.mean(clip[middle] ** 2)))

    assert 0.4 < rms(quiet_back) / rms(loud_back) < 0.6  # the level comes back
    assert 0.5 < rms(loud_back) / rms(loud) < 2.0  # near the level it was (a sine comes back as band noise)
    assert np.abs(by_peak.audio(by_peak.spectrogram(quiet), iterations=4)).max() == pytest.approx(0.9, abs=1e-3)


def test_griffin_lim_momentum_is_a_setting_and_its_default_is_the_earlier_behaviour():
    settings = MelSettings(resolution=32)
    transform = MelTransform(settings)
    spectrogram = transform.spectrogram(_tone(0.5, settings))
    default = transform.audio(spectrogram, iterations=8)
    assert np.array_equal(default, transform.audio(spectrogram, iterations=8, momentum=0.99))
    assert not np.allclose(default, transform.audio(spectrogram, iterations=8, momentum=0.0))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["data.frames=250"], "'data.frames': 250 does not fit the UNet: 3 levels halve it 2 times"),
        (["data.mel_bins=64", "data.frames=64", "data.n_fft=256"], "'data.n_fft': 256 is shorter than the hop"),
        (["data.preset=audioldm", "data.sample_rate=44100"], "'data.sample_rate': data.preset=audioldm needs 16000"),
        (["data.preset=hifi"], "'data.preset': 'hifi' is not one of audioldm"),
        (["data.level=loud"], "'data.level': 'loud' is not one of peak, fixed"),
        (["sample.vocoder=hifigan"], "'sample.vocoder': hifigan voices natural-log mel magnitudes"),
        (["sample.vocoder=wavenet"], "'sample.vocoder': 'wavenet' is not one of griffin_lim, hifigan"),
        (["sample.griffin_lim_momentum=1"], "'sample.griffin_lim_momentum': must be in"),
    ],
)
def test_mel_settings_no_unet_or_vocoder_can_take_fail_at_config_time(overrides, named, tmp_path):
    with pytest.raises(UserError, match="invalid config key " + named):
        load_config(TINY_CONFIG, [f"output_dir={tmp_path}", *overrides])


def test_the_audioldm_preset_sets_exactly_its_vocoders_mel_settings(tmp_path):
    from core.spectrograms import mel_settings

    mel = mel_settings(load_config(TINY_CONFIG, [f"output_dir={tmp_path}", "data.preset=audioldm"]).data)
    assert (mel.sample_rate, mel.n_mels, mel.window_length, mel.hop_length) == (16000, 64, 1024, 160)
    assert (mel.f_min, mel.f_max, mel.scale, mel.level, mel.n_frames) == (0.0, 8000.0, "ln", "fixed", 512)


def test_a_64_by_256_model_trains_samples_and_is_scored_end_to_end(
    tmp_path, tmp_path_factory, esc50_mini, spectrogram_cache_dir
):
    from core.diffusion.model import DiffusionModel
    from evaluation.evaluate import EvaluationRequest, evaluate
    from evaluation.scoring import EvalOptions
    from training.train import train

    config = load_config(
        REPO / "configs" / "tiny_64x256.yaml",
        [f"output_dir={tmp_path / 'run'}", f"data.source={esc50_mini}", f"data.cache_dir={spectrogram_cache_dir}",
         f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "train.max_steps=2", "train.checkpoint_every=2",
         "train.sample_classes=[0]", "sample.steps=2", "sample.griffin_lim_iters=2"],
    )  # fmt: skip
    result = train(config, show_progress=False)
    model = DiffusionModel.load(result.model_dir)
    assert model.sample_shape == (64, 256) and model.mel.shape == (64, 256)
    outcome = evaluate(
        EvaluationRequest(
            model=str(result.model_dir), generation={"per_class": 1, "steps": 2}, metrics=["esc"],
            out=str(tmp_path / "evaluation"), cache_dir=str(tmp_path_factory.getbasetemp() / "evaluation-cache"),
            mlflow=False, options=EvalOptions(bootstrap=0),
        ),
        show_progress=False,
    )  # fmt: skip
    assert {"fd_esc", "real_fd_esc", "repr_fd_esc"} <= set(outcome.metrics)
    record = json.loads((tmp_path / "evaluation" / "generated" / "generation.json").read_text())
    assert (record["mel"]["mel_bins"], record["mel"]["frames"], record["vocoder"]) == (64, 256, "griffin_lim")
    clip, rate = soundfile.read(next((tmp_path / "evaluation" / "generated").glob("*/0.wav")))
    assert (rate, len(clip)) == (22050, 110250)


def small_hifigan(folder: Path, mel_bins: int = 64) -> Path:
    """A SpeechT5HifiGan built from its config with random weights: AudioLDM's interface (16 kHz, hop 160)."""
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    config = SpeechT5HifiGanConfig(
        model_in_dim=mel_bins, sampling_rate=16000, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[10, 8, 4, 4, 4], upsample_initial_channel=32, resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]], normalize_before=False,
    )  # fmt: skip
    torch.manual_seed(0)
    SpeechT5HifiGan(config).save_pretrained(folder)
    return folder


def audioldm_model(folder: Path) -> Path:
    from core.config import ModelConfig
    from core.diffusion.model import DiffusionModel
    from core.diffusion.network import build_unet
    from core.diffusion.schedules import noise_schedule
    from core.spectrograms import mel_settings

    mel = mel_settings(load_config(TINY_CONFIG, [f"output_dir={folder}", "data.preset=audioldm"]).data)
    torch.manual_seed(0)
    unet = build_unet(
        ModelConfig(block_channels=[8, 16], layers_per_block=1, norm_groups=8, attention=False), mel.shape
    )
    schedule = dict(noise_schedule(1000, "linear", "epsilon").config)
    DiffusionModel(unet, schedule, mel, normalize=True, training={"source": "none", "filenames": []}).save(folder)
    return folder


def test_a_hifigan_checkpoint_voices_an_audioldm_model_end_to_end(tmp_path):
    from core.generation import GenerationRequest, generate
    from core.vocoders import HifiGan

    vocoder = small_hifigan(tmp_path / "vocoder")
    model = audioldm_model(tmp_path / "model")
    out = tmp_path / "generated"
    generate(
        GenerationRequest(model=str(model), out=str(out), per_class=1, classes=[0, 1, 2], steps=2, batch_size=2,
                          vocoder="hifigan", vocoder_path=str(vocoder)),
        show_progress=False,
    )  # fmt: skip
    clips = sorted(out.glob("*/0.wav"))
    assert len(clips) == 3
    for path in clips:
        samples, rate = soundfile.read(path)
        assert (rate, len(samples)) == (16000, 80000) and np.isfinite(samples).all()
    assert json.loads((out / "generation.json").read_text())["vocoder_path"] == str(vocoder)
    # Batched and one at a time agree (the network is deterministic; padding does not leak between clips).
    from core.diffusion.model import DiffusionModel

    voice = HifiGan(DiffusionModel.load(model).mel, str(vocoder))
    batch = torch.rand(3, 64, 512)
    together = voice(batch)
    alone = np.concatenate([voice(batch[i : i + 1]) for i in range(3)])
    assert together.shape == (3, 80000)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_a_hifigan_checkpoint_of_other_mel_settings_or_none_at_all_is_refused_in_one_line(tmp_path):
    from core.diffusion.model import DiffusionModel
    from core.vocoders import HifiGan

    mel = DiffusionModel.load(audioldm_model(tmp_path / "model")).mel
    with pytest.raises(UserError, match=r"does not fit the model's mel settings: mel bins 80 \(the data has 64\)"):
        HifiGan(mel, str(small_hifigan(tmp_path / "eighty", mel_bins=80)))
    with pytest.raises(UserError, match="no HiFi-GAN checkpoint at .*missing: download the vocoder/ folder") as error:
        HifiGan(mel, str(tmp_path / "missing"))
    assert "cvssp/audioldm-s-full-v2" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="needs a checkpoint"):
        HifiGan(mel, "")
    # In a config, before any training: the checkpoint's config.json is checked against the preset.
    preset = [f"output_dir={tmp_path / 'run'}", "data.preset=audioldm", "sample.vocoder=hifigan"]
    with pytest.raises(UserError, match="'sample.vocoder_path': sample.vocoder=hifigan needs a checkpoint"):
        load_config(TINY_CONFIG, preset)
    with pytest.raises(UserError, match="mel bins 80"):
        load_config(TINY_CONFIG, [*preset, f"sample.vocoder_path={tmp_path / 'eighty'}"])
    good = load_config(TINY_CONFIG, [*preset, f"sample.vocoder_path={small_hifigan(tmp_path / 'good')}"])
    assert good.sample.vocoder == "hifigan"


def test_the_round_trip_distances_ignore_level_and_grow_with_damage():
    from evaluation.roundtrip import spectral_distances

    rng = np.random.default_rng(0)
    clips = rng.normal(0, 0.1, (2, 22050)).astype(np.float32)
    convergence, log_spectral = spectral_distances(clips, clips * 0.5)  # a level change only
    assert np.allclose(convergence, 0, atol=1e-5) and np.allclose(log_spectral, 0, atol=1e-3)
    damaged = clips + rng.normal(0, 0.1, clips.shape).astype(np.float32)
    convergence, log_spectral = spectral_distances(clips, damaged)
    assert (convergence > 0.3).all() and (log_spectral > 1).all()


def test_evaluation_keeps_levels_for_a_fixed_level_generator_and_peak_normalizes_otherwise():
    from evaluation.evaluate import _protocol_options
    from evaluation.scoring import EvalOptions

    fixed = {"mel": json.loads(MelSettings(resolution=32, level="fixed").to_json())}
    assert _protocol_options(EvalOptions(), fixed).peak == 0.0
    assert _protocol_options(EvalOptions(), {"mel": json.loads(MelSettings().to_json())}).peak == -1.0  # 0.9
    assert _protocol_options(EvalOptions(peak=0.5), fixed).peak == 0.5  # asked for: kept


def test_the_round_trip_command_has_help():
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "evaluation.roundtrip", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0 and "spectral convergence" in " ".join(completed.stdout.split())
