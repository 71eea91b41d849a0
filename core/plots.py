"""Figures people look at instead of reading numbers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def save_figure(figure, path: str | os.PathLike) -> None:
    """Save under a temporary name, then rename (an interrupted save leaves no half PNG)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=110, bbox_inches="tight")
    plt.close(figure)
    os.replace(temporary, path)


def spectrogram_grid(spectrograms: np.ndarray, titles: list[str], path: str | os.PathLike, columns: int = 5) -> None:
    """A grid of log-mel spectrograms (low frequencies at the bottom), one titled panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(spectrograms)
    columns = max(1, min(columns, count))
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, spectrograms, titles):
        axis.imshow(image, origin="lower", aspect="auto", cmap="magma", vmin=0.0, vmax=1.0)
        axis.set_title(title, fontsize=8)
    save_figure(figure, path)


def real_beside_generated(
    real: np.ndarray | None, generated: np.ndarray, names: list[str], mel, path: str | os.PathLike
) -> None:
    """Per class a row: a real training spectrogram beside a generated one, in seconds and Hz, with a colour bar.

    `real` (or None) and `generated` are (classes, mel bins, frames) in [0, 1]; `mel` is their `MelSettings`.
    The y axis is labelled at the mel bands' centre frequencies (librosa's mel scale, as the transform uses).
    """
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = (
        [("real (training clip)", real), ("generated", generated)] if real is not None else [("generated", generated)]
    )
    rows = len(names)
    figure, axes = plt.subplots(rows, len(columns), figsize=(4.2 * len(columns), 2.2 * rows + 0.6), squeeze=False)
    centres = librosa.mel_frequencies(n_mels=mel.n_mels, fmin=mel.f_min, fmax=mel.f_max or mel.sample_rate / 2)
    ticks = np.linspace(0, mel.n_mels - 1, 5).round().astype(int)
    image = None
    for row, name in enumerate(names):
        for column, (title, spectrograms) in enumerate(columns):
            axis = axes[row, column]
            image = axis.imshow(spectrograms[row], origin="lower", aspect="auto", cmap="magma", vmin=0.0, vmax=1.0,
                                extent=(0.0, mel.clip_seconds, -0.5, mel.n_mels - 0.5))  # fmt: skip
            axis.set_yticks(ticks, [f"{centres[t] / 1000:.1f}k" if centres[t] >= 1000 else f"{centres[t]:.0f}"
                                    for t in ticks])  # fmt: skip
            axis.set_title(f"{name}: {title}", fontsize=8)
            axis.tick_params(labelsize=7)
            if column == 0:
                axis.set_ylabel("Hz", fontsize=7)
            if row == rows - 1:
                axis.set_xlabel("seconds", fontsize=7)
    scale = "dB below the reference, scaled to [0, 1]" if mel.scale == "db" else "ln magnitude, scaled to [0, 1]"
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=scale)
    save_figure(figure, path)
