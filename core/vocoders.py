"""Vocoders: a batch of spectrograms in [0, 1] (B, mel bins, frames) back to clips (B, samples).

    griffin_lim  phase retrieval by Griffin-Lim (batched, torchaudio), with momentum (fast Griffin-Lim)
    hifigan      a HiFi-GAN from a local checkpoint: the reference case is AudioLDM's (transformers'
                 `SpeechT5HifiGan`, as diffusers' AudioLDM pipelines load it), for `data.preset=audioldm`

`sample.vocoder` picks one; each checks at config time that it can invert the mel settings, and a
neural vocoder checks its checkpoint against them when it loads. Weights are never downloaded: a
missing checkpoint stops with what to put where.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from core.audio import MelSettings, MelTransform, fix_length
from core.errors import UserError

# Where a user gets AudioLDM's vocoder: the `vocoder/` folder of this Hugging Face repository.
AUDIOLDM_VOCODER = "cvssp/audioldm-s-full-v2"
WHERE = (
    f"download the vocoder/ folder (config.json and its weights) of {AUDIOLDM_VOCODER} and pass its path "
    "as --vocoder PATH or sample.vocoder_path"
)


class GriffinLim:
    name = "griffin_lim"

    def __init__(self, mel: MelSettings, iterations: int = 32, momentum: float = 0.99, **_: object):
        self.mel, self.iterations, self.momentum = mel, iterations, momentum
        self.transform = MelTransform(mel)

    @staticmethod
    def check_settings(mel: MelSettings, key: str) -> None:
        """Any mel settings whose window covers the hop (core.config checks that) can be inverted."""

    def __call__(self, spectrograms: torch.Tensor, seed: int = 0) -> np.ndarray:
        return self.transform.audio(spectrograms, iterations=self.iterations, seed=seed, momentum=self.momentum)


class HifiGan:
    """A `SpeechT5HifiGan` voicing natural-log mel magnitudes (AudioLDM's convention), deterministic."""

    name = "hifigan"

    def __init__(self, mel: MelSettings, path: str = "", device: str | torch.device = "cpu", **_: object):
        self.mel, self.device = mel, torch.device(device)
        self.transform = MelTransform(mel)
        self.network = load_hifigan(path).to(self.device).eval()
        check_checkpoint(self.network.config, mel, path)

    @staticmethod
    def check_settings(mel: MelSettings, key: str) -> None:
        if mel.scale != "ln":
            raise UserError(
                f"invalid config key '{key}': hifigan voices natural-log mel magnitudes at its checkpoint's rate: "
                "set data.preset=audioldm (the settings AudioLDM's vocoder was trained on)"
            )

    @staticmethod
    def check_path(path: str, mel: MelSettings, key: str) -> None:
        """Config time: a checkpoint is named, and a local one's config.json fits the mel settings (no weights read)."""
        if not path:
            raise UserError(f"invalid config key '{key}': sample.vocoder=hifigan needs a checkpoint here ({WHERE})")
        folder = Path(path).expanduser()
        folder = folder / "vocoder" if (folder / "vocoder" / "config.json").is_file() else folder
        if (folder / "config.json").is_file():
            import json
            from types import SimpleNamespace

            check_checkpoint(SimpleNamespace(**json.loads((folder / "config.json").read_text())), mel, path)
        elif folder.exists() or path.count("/") != 1:  # not a folder with a config, nor a hub id
            raise UserError(f"invalid config key '{key}': no HiFi-GAN checkpoint at {path} ({WHERE})")

    @torch.inference_mode()
    def __call__(self, spectrograms: torch.Tensor, seed: int = 0) -> np.ndarray:
        batch = torch.as_tensor(spectrograms, dtype=torch.float32).to(self.device)
        batch = batch[None] if batch.dim() == 2 else batch
        log_mel = torch.log(self.transform.magnitude_mel(batch))  # (B, bins, frames)
        waveforms = self.network(log_mel.transpose(1, 2))  # (B, frames * hop)
        waveforms = waveforms if waveforms.dim() == 2 else waveforms[None]
        return fix_length(waveforms.clamp(-1.0, 1.0).float().cpu().numpy(), self.mel.clip_samples)


def load_hifigan(path: str):
    """The checkpoint in folder `path` (config.json + weights; a folder holding `vocoder/` works too), or a hub
    id already in the user's Hugging Face cache (its `vocoder/` subfolder, as AudioLDM repositories have)."""
    from transformers import SpeechT5HifiGan

    where = WHERE
    if not path:
        raise UserError(f"sample.vocoder=hifigan needs a checkpoint: {where}")
    folder = Path(path).expanduser()
    try:
        if folder.is_dir():
            folder = folder / "vocoder" if (folder / "vocoder" / "config.json").is_file() else folder
            return SpeechT5HifiGan.from_pretrained(folder, local_files_only=True)
        if not folder.exists() and path.count("/") == 1:  # a hub id: only from the local cache
            return SpeechT5HifiGan.from_pretrained(path, subfolder="vocoder", local_files_only=True)
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise UserError(f"cannot load a HiFi-GAN checkpoint from {path} ({reason}): {where}") from None
    raise UserError(f"no HiFi-GAN checkpoint at {path}: {where}")


def check_checkpoint(config, mel: MelSettings, path: str) -> None:
    """The checkpoint was trained on these mel settings: rate, bins and hop (its upsampling) agree."""
    upsampling = math.prod(config.upsample_rates)
    found = {"sample rate": config.sampling_rate, "mel bins": config.model_in_dim, "hop": upsampling}
    wanted = {"sample rate": mel.sample_rate, "mel bins": mel.n_mels, "hop": mel.hop_length}
    wrong = [f"{k} {found[k]} (the data has {wanted[k]})" for k in found if found[k] != wanted[k]]
    if wrong:
        raise UserError(f"the HiFi-GAN checkpoint at {path} does not fit the model's mel settings: {', '.join(wrong)}")


VOCODERS = {vocoder.name: vocoder for vocoder in (GriffinLim, HifiGan)}


def build_vocoder(
    name: str, mel: MelSettings, *, iterations: int = 32, momentum: float = 0.99, path: str = "", device: str = "cpu"
):
    """The vocoder `name` for these mel settings (sample.vocoder and its options)."""
    if name not in VOCODERS:
        raise UserError(f"unknown vocoder '{name}': choose from {', '.join(VOCODERS)}")
    VOCODERS[name].check_settings(mel, "sample.vocoder")
    return VOCODERS[name](mel, iterations=iterations, momentum=momentum, path=path, device=device)


def vocoder_choice(value: str | None) -> dict:
    """`--vocoder NAME` picks a vocoder; `--vocoder PATH` is a HiFi-GAN checkpoint (and picks hifigan)."""
    if value is None:
        return {}
    return {"vocoder": value} if value in VOCODERS else {"vocoder": "hifigan", "vocoder_path": value}
