"""The offline ESC scorer: a small CNN on log-mels that the tool trains itself, since VGGish and CLAP
weights cannot be downloaded everywhere.

It is trained on first use on the reference clips (the real clips every row is compared with, never the
evaluated generator's training clips: `evaluation.protocol`), cached under a key of those clips and the
settings, and reported with its accuracy on held-out real clips of other recordings, which it never saw.
Few clips per class (1 to 3 on esc50-mini) call for heavy augmentation: random circular time shifts and
crops, SpecAugment frequency/time masks and mixup. Its logits give `esc_top1/5/10` and `esc_map10` (the
same ranking code as CLAP's accuracy); its penultimate layer gives `fd_esc`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from core.esc50 import NUM_CLASSES
from core.rng import seeded
from evaluation.clips import decoded_batches, fingerprint
from evaluation.metrics import ranking_metrics
from evaluation.protocol import Preprocessing, ReferenceSplit

log = logging.getLogger(__name__)
SCORER_VERSION = 2  # bump when the network, features or training change (2: clips preprocessed as generated ones)


@dataclass(frozen=True)
class ScorerSettings:
    sample_rate: int = 22050
    clip_seconds: float = 5.0
    n_mels: int = 40  # 40 beat 64 on esc50-mini held-out clips (0.44 vs 0.36 top-1, 2 seeds) and costs less
    n_fft: int = 2048
    hop_length: int = 1024  # 108 frames per 5 s clip: coarse, but 4x cheaper than 256 and as accurate here
    channels: tuple[int, ...] = (16, 32, 64, 128)
    embedding_dim: int = 128
    epochs: int = 80
    batch_size: int = 32
    learning_rate: float = 3e-3
    crop_frames: int = 96
    mixup_alpha: float = 0.4
    freq_mask: int = 8
    time_mask: int = 24
    dropout: float = 0.3
    seed: int = 0
    num_classes: int = NUM_CLASSES  # the reference's class set (ESC-50's 50, or a collection's own)


class LogMel(nn.Module):
    """Clips (B, T) -> log-mel (B, n_mels, frames) in [0, 1], 0 = 80 dB below the clip's own peak."""

    def __init__(self, settings: ScorerSettings):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(
            settings.sample_rate, n_fft=settings.n_fft, hop_length=settings.hop_length, n_mels=settings.n_mels
        )

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        db = 10.0 * torch.log10(self.mel(clips).clamp_min(1e-10))
        db = db - db.amax(dim=(-2, -1), keepdim=True)  # loudness says nothing about the class
        return db.clamp_min(-80.0) / 80.0 + 1.0


class ScorerNet(nn.Module):
    """Conv-BN-ReLU-pool blocks, mean over frequency, mean+max over time, an embedding layer, class logits."""

    def __init__(self, settings: ScorerSettings):
        super().__init__()
        blocks, channels_in = [], 1
        for channels in settings.channels:
            blocks += [
                nn.Conv2d(channels_in, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels_in = channels
        self.features = nn.Sequential(*blocks)
        self.embedding = nn.Sequential(
            nn.Dropout(settings.dropout), nn.Linear(2 * channels_in, settings.embedding_dim), nn.ReLU()
        )
        self.classifier = nn.Sequential(
            nn.Dropout(settings.dropout), nn.Linear(settings.embedding_dim, settings.num_classes)
        )

    def forward(self, log_mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.features(log_mels[:, None]).mean(dim=2)  # (B, C, frames): pooled over frequency
        pooled = torch.cat([hidden.mean(dim=-1), hidden.amax(dim=-1)], dim=1)  # any clip length works
        embedding = self.embedding(pooled)
        return self.classifier(embedding), embedding


@dataclass
class EscScorer:
    """A trained scorer with its feature normalization, held-out results and the reference embeddings."""

    net: ScorerNet
    settings: ScorerSettings
    mean: float
    std: float
    held_out: dict[str, float] = field(default_factory=dict)  # esc_top1... on the held-out real clips
    reference_embeddings: np.ndarray | None = None
    reference_targets: np.ndarray | None = None
    device: str = "cpu"
    preprocessing: Preprocessing | None = None  # applied to every clip before its features
    cache_path: Path | None = None  # where it is cached; real clips' predictions are cached beside it

    def __post_init__(self):
        self.log_mel = LogMel(self.settings).to(self.device)
        self.net.to(self.device).eval()

    def features(self, clips: np.ndarray | torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self.log_mel(torch.as_tensor(clips, device=self.device)) - self.mean) / self.std

    @torch.no_grad()
    def predict(self, clips: pd.DataFrame, show_progress: bool = True, desc: str = "ESC scorer"):
        """(logits (N, 50), embeddings (N, embedding_dim)) of every clip of the table, in order."""
        s = self.settings
        logits, embeddings = [], []
        for batch in decoded_batches(clips, s.sample_rate, 32, s.clip_seconds, desc, show_progress, self.preprocessing):
            batch_logits, batch_embeddings = self.net(self.features(batch))
            logits.append(batch_logits.float().cpu().numpy())
            embeddings.append(batch_embeddings.float().cpu().numpy())
        return np.concatenate(logits), np.concatenate(embeddings)


def cached_predictions(scorer: EscScorer, clips: pd.DataFrame, show_progress: bool = True, desc: str = "ESC scorer"):
    """`scorer.predict` of a set of real clips, cached beside the scorer under a key of the clips: every trial
    of a sweep scores the same ceiling and (for the memorization share) the same training clips."""
    if scorer.cache_path is None:
        return scorer.predict(clips, show_progress, desc)
    key = hashlib.sha256(fingerprint(clips).encode()).hexdigest()[:16]
    path = scorer.cache_path.with_name(f"{scorer.cache_path.stem}-predictions-{key}.npz")
    if path.is_file():
        try:
            with np.load(path) as stored:
                return stored["logits"], stored["embeddings"]
        except Exception as error:  # damaged: recompute
            log.warning("ignoring unreadable prediction cache %s (%s)", path, error)
    logits, embeddings = scorer.predict(clips, show_progress, desc)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    with os.fdopen(handle, "wb") as stream:
        np.savez(stream, logits=logits, embeddings=embeddings)
    os.replace(temporary, path)
    return logits, embeddings


def scorer_key(split: ReferenceSplit, settings: ScorerSettings, preprocessing: Preprocessing | None = None) -> str:
    treatment = preprocessing.describe() if preprocessing else ""
    payload = [SCORER_VERSION, asdict(settings), fingerprint(split.reference), fingerprint(split.held_out), treatment]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_or_train_scorer(
    split: ReferenceSplit,
    settings: ScorerSettings = ScorerSettings(),
    cache_dir: str | os.PathLike = ".cache/evaluation",
    device: str = "cpu",
    show_progress: bool = True,
    preprocessing: Preprocessing | None = None,
) -> EscScorer:
    """The cached scorer for this reference split and settings, trained first when there is none.

    A file lock makes concurrent callers (Ray trials) wait for one training instead of each running it.
    """
    folder = Path(cache_dir) / "esc_scorer"
    folder.mkdir(parents=True, exist_ok=True)
    key = scorer_key(split, settings, preprocessing)
    path = folder / f"{key}.pt"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            try:
                scorer = _load(path, settings, device, preprocessing)
                scorer.cache_path = path
                return scorer
            except Exception as error:  # a file from an older torch or a damaged one: retrain
                log.warning("ignoring unreadable scorer cache %s (%s)", path, error)
        scorer = train_scorer(split, settings, device, show_progress, preprocessing)
        _save(scorer, path)
        scorer.cache_path = path
        return scorer


def train_scorer(
    split: ReferenceSplit,
    settings: ScorerSettings,
    device: str = "cpu",
    show_progress: bool = True,
    preprocessing: Preprocessing | None = None,
) -> EscScorer:
    s = settings
    decoded = decoded_batches(
        split.reference, s.sample_rate, 64, s.clip_seconds, "decoding", show_progress, preprocessing
    )
    clips = np.concatenate(list(decoded))
    targets = torch.tensor(split.reference["target"].to_numpy(), device=device)
    with torch.no_grad():
        log_mels = LogMel(s).to(device)(torch.as_tensor(clips, device=device))
    mean, std = log_mels.mean().item(), log_mels.std().item()
    inputs = (log_mels - mean) / std
    # Our own seeded RNG state (initial weights on the CPU, shuffles and dropout on `device`), so training
    # is repeatable and the caller's random streams are left alone.
    with seeded(s.seed, "cpu", device):
        rng = np.random.default_rng(s.seed)
        net = _fit(ScorerNet(s).to(device), inputs, targets, s, rng, show_progress)
    scorer = EscScorer(net, s, mean, std, device=device, preprocessing=preprocessing)
    held_logits, _ = scorer.predict(split.held_out, show_progress=False)
    scorer.held_out = ranking_metrics(held_logits, split.held_out["target"].to_numpy(), "esc")
    with torch.no_grad():
        scorer.reference_embeddings = np.concatenate(
            [net(inputs[i : i + 64])[1].float().cpu().numpy() for i in range(0, len(inputs), 64)]
        )
    scorer.reference_targets = split.reference["target"].to_numpy()
    log.info("ESC scorer trained on %d clips; held-out top-1 %.3f", len(inputs), scorer.held_out["esc_top1"])
    return scorer


def _fit(net, inputs, targets, s: ScorerSettings, rng, show_progress: bool) -> ScorerNet:
    import torchaudio

    frequency_mask = torchaudio.transforms.FrequencyMasking(s.freq_mask, iid_masks=True)
    time_mask = torchaudio.transforms.TimeMasking(s.time_mask, iid_masks=True)
    batches_per_epoch = -(-len(inputs) // s.batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=s.learning_rate, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, s.learning_rate, total_steps=s.epochs * batches_per_epoch)
    frames = inputs.shape[-1]
    crop = min(s.crop_frames, frames)
    net.train()
    for _ in tqdm(range(s.epochs), desc="training ESC scorer", disable=not show_progress, leave=False):
        order = torch.randperm(len(inputs), device=inputs.device)
        for start in range(0, len(inputs), s.batch_size):
            index = order[start : start + s.batch_size]
            batch, labels = inputs[index], targets[index]
            # A random circular shift per clip, then one random crop: the class is anywhere in the clip.
            shifts = rng.integers(0, frames, len(index))
            batch = torch.stack([torch.roll(clip, int(shift), dims=-1) for clip, shift in zip(batch, shifts)])
            offset = int(rng.integers(0, frames - crop + 1))
            batch = time_mask(frequency_mask(batch[:, None, :, offset : offset + crop]))[:, 0]
            if s.mixup_alpha > 0:
                weight = float(rng.beta(s.mixup_alpha, s.mixup_alpha))
                partner = torch.randperm(len(index), device=inputs.device)
                logits, _ = net(weight * batch + (1 - weight) * batch[partner])
                loss = weight * F.cross_entropy(logits, labels) + (1 - weight) * F.cross_entropy(
                    logits, labels[partner]
                )
            else:
                logits, _ = net(batch)
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


def _save(scorer: EscScorer, path: Path) -> None:
    state = {
        "version": SCORER_VERSION,
        "settings": asdict(scorer.settings),
        "net": {k: v.cpu() for k, v in scorer.net.state_dict().items()},
        "mean": scorer.mean,
        "std": scorer.std,
        "held_out": scorer.held_out,
        "reference_embeddings": torch.tensor(scorer.reference_embeddings),
        "reference_targets": torch.tensor(scorer.reference_targets),
    }
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _load(path: Path, settings: ScorerSettings, device: str, preprocessing: Preprocessing | None) -> EscScorer:
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = ScorerNet(settings)
    net.load_state_dict(state["net"])
    return EscScorer(
        net, settings, state["mean"], state["std"], dict(state["held_out"]),
        state["reference_embeddings"].numpy(), state["reference_targets"].numpy(), device=device,
        preprocessing=preprocessing,
    )  # fmt: skip
