"""Clips of chosen classes written as WAVs plus a PNG grid: what a run sounds and looks like."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.audio import write_wav_atomic
from core.config import SampleConfig
from core.diffusion.model import DiffusionModel
from core.diffusion.samplers import sample_spectrograms
from core.plots import real_beside_generated, spectrogram_grid
from core.vocoders import build_vocoder


def write_class_samples(
    model: DiffusionModel,
    classes: list[int],
    folder: str | os.PathLike,
    sample: SampleConfig,
    seed: int,
    real: np.ndarray | None = None,
) -> Path:
    """<class>.wav per class, spectrograms.png (the generated grid) and, given `real` spectrograms of the same
    classes, real_vs_generated.png: each class's real and generated spectrogram side by side, in seconds and Hz."""
    folder = Path(folder)
    spectrograms = sample_spectrograms(
        model, classes, sample.scheduler, sample.steps, sample.guidance_scale, sample.batch_size, seed
    )
    vocoder = build_vocoder(
        sample.vocoder, model.mel, iterations=sample.griffin_lim_iters, momentum=sample.griffin_lim_momentum,
        path=sample.vocoder_path, device=str(model.unet.device),
    )  # fmt: skip
    clips = vocoder(spectrograms, seed=seed)
    names = [model.categories[c] for c in classes]
    for name, clip in zip(names, clips):
        write_wav_atomic(folder / f"{name}.wav", clip, model.mel.sample_rate)
    spectrogram_grid(spectrograms.numpy(), names, folder / "spectrograms.png")
    real_beside_generated(real, spectrograms.numpy(), names, model.mel, folder / "real_vs_generated.png")
    return folder
