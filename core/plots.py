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
