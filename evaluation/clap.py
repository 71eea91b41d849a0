"""CLAP classification accuracy (CA): zero-shot classification of each clip among the 50 ESC-50 classes.

One text prompt per class from a template; each clip ranks the classes by the cosine similarity of its
CLAP audio embedding to each prompt's text embedding; top-k accuracy and mAP@10 follow from the ranks
(evaluation.metrics, the same code as the offline scorer's). The model is any object with LAION-CLAP's
`get_audio_embedding_from_data(x, use_tensor=False)` and `get_text_embedding(texts)`, so tests can pass
a stand-in; `load_clap_model` builds the real one from a local checkpoint file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError
from core.esc50 import ESC50_CATEGORIES
from evaluation.clips import CLIP_SECONDS, decoded_batches
from evaluation.protocol import Preprocessing

CLAP_SAMPLE_RATE = 48000
DEFAULT_TEMPLATE = "This is a sound of {category}."
CHECKPOINT_SOURCE = "https://huggingface.co/lukewys/laion_clap"
# name -> (file, audio encoder, fusion); the names frechet_audio_distance also uses, and the files LAION publishes.
CLAP_CHECKPOINTS: dict[str, tuple[str, str, bool]] = {
    "630k-audioset": ("630k-audioset-best.pt", "HTSAT-tiny", False),
    "630k-audioset-fusion": ("630k-audioset-fusion-best.pt", "HTSAT-tiny", True),
    "630k": ("630k-best.pt", "HTSAT-tiny", False),
    "630k-fusion": ("630k-fusion-best.pt", "HTSAT-tiny", True),
    "music_audioset": ("music_audioset_epoch_15_esc_90.14.pt", "HTSAT-base", False),
    "music_speech": ("music_speech_epoch_15_esc_89.25.pt", "HTSAT-base", False),
    "music_speech_audioset": ("music_speech_audioset_epoch_15_esc_89.98.pt", "HTSAT-base", False),
}


def resolve_clap_checkpoint(checkpoint: str, ckpt_dir: str | os.PathLike) -> tuple[Path, str, bool]:
    """(file, audio encoder, fusion) for a checkpoint name (looked up in `ckpt_dir`) or a file path.

    A path whose file name is one of LAION's gets that checkpoint's encoder; any other file is taken
    to be an HTSAT-tiny model without fusion (LAION-CLAP's default architecture).
    """
    if checkpoint in CLAP_CHECKPOINTS:
        file, audio_model, fusion = CLAP_CHECKPOINTS[checkpoint]
        return Path(ckpt_dir) / file, audio_model, fusion
    path = Path(checkpoint).expanduser()
    if path.suffix not in (".pt", ".pth", ".ckpt"):
        names = ", ".join(CLAP_CHECKPOINTS)
        raise UserError(f"--clap-checkpoint '{checkpoint}' is neither a checkpoint file nor one of: {names}")
    for file, audio_model, fusion in CLAP_CHECKPOINTS.values():
        if path.name == file:
            return path, audio_model, fusion
    return path, "HTSAT-tiny", False


def load_clap_model(checkpoint: str, ckpt_dir: str | os.PathLike, device: str = "") -> Any:
    """LAION-CLAP's `CLAP_Module` with the checkpoint's weights, from local files only."""
    path, audio_model, fusion = resolve_clap_checkpoint(checkpoint, ckpt_dir)
    if not path.is_file():
        raise UserError(
            f"CLAP checkpoint {path} not found: download {path.name} from {CHECKPOINT_SOURCE} into "
            f"{path.parent} (or pass --clap-checkpoint PATH)"
        )
    import laion_clap
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = laion_clap.CLAP_Module(enable_fusion=fusion, amodel=audio_model, device=device)
    except Exception as error:  # offline without roberta-base: OSError from transformers
        hub_cache = os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
        reason = " ".join(str(error).split())[:200]
        raise UserError(
            f"cannot build the CLAP model: it needs the roberta-base tokenizer and text encoder in the "
            f"Hugging Face cache {hub_cache} (fill it once online, e.g. `huggingface-cli download roberta-base`): "
            f"{reason}"
        ) from None
    try:
        model.load_ckpt(str(path), verbose=False)
    except Exception as error:
        raise UserError(f"cannot load CLAP checkpoint {path}: {' '.join(str(error).split())[:200]}") from None
    return model


def class_prompts(template: str = DEFAULT_TEMPLATE, categories: tuple[str, ...] = ESC50_CATEGORIES) -> list[str]:
    """One prompt per class: the template with `{category}` replaced by the class name in words."""
    if "{category}" not in template:
        raise UserError(f"--clap-template '{template}' must contain {{category}}")
    try:
        return [template.format(category=name.replace("_", " ")) for name in categories]
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(f"--clap-template '{template}' is not a valid format string ({error})") from None


class ZeroShotClassifier:
    """Class scores (cosine similarities) of clips against the class prompts."""

    def __init__(self, model: Any, template: str = DEFAULT_TEMPLATE, batch_size: int = 16, categories=ESC50_CATEGORIES):
        self.model = model
        self.batch_size = batch_size
        self.prompts = class_prompts(template, tuple(categories))  # one prompt per class of the reference's set
        self.text_embeddings = _unit_rows(model.get_text_embedding(self.prompts))

    def scores(
        self,
        clips: pd.DataFrame,
        seconds: float = CLIP_SECONDS,
        show_progress: bool = True,
        desc: str = "CLAP",
        preprocessing: Preprocessing | None = None,
    ) -> np.ndarray:
        """(N, 50) similarities of every clip of the table (decoded at 48 kHz, `seconds` long) to each prompt."""
        rows = []
        batches = decoded_batches(clips, CLAP_SAMPLE_RATE, self.batch_size, seconds, desc, show_progress, preprocessing)
        for batch in batches:
            audio = self.model.get_audio_embedding_from_data(x=batch, use_tensor=False)  # it quantizes as LAION's
            rows.append(_unit_rows(audio) @ self.text_embeddings.T)
        return np.concatenate(rows)


def _unit_rows(embeddings: Any) -> np.ndarray:
    if hasattr(embeddings, "detach"):
        embeddings = embeddings.detach().cpu().numpy()
    embeddings = np.asarray(embeddings, dtype=np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
