"""Frechet Audio Distance through the `frechet_audio_distance` package, with cached reference embeddings.

The package's model (VGGish, PANN, CLAP or EnCodec) and its `get_embeddings` do the work; the distance is
`evaluation.metrics.embedding_frechet_distance` (the package's formula, computed from the embeddings:
for 100 clips of PANN's 2048-d, 0.01 s instead of scipy sqrtm's 8.8 s on 2 cores).

Added here: clips come from a table (a generated manifest or the reference split) and are decoded at
exactly 5.0 s at the model's rate; every clip must be embedded (the package prints and skips clips it
fails on; here that is an error); PANN's per-clip vectors stay rows (the package's `score()` flattens
them into one 1-D array); the reference's embeddings are cached on disk under a key of
(reference clips, model and weights, sample rate, clip length), so scoring many generated sets never
re-embeds the reference; PANN runs on whole batches (the package runs it clip by clip), falling back
to clip by clip only to name a clip that fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError
from evaluation.clips import CLIP_SECONDS, decoded_batches, fingerprint
from evaluation.metrics import embedding_frechet_distance
from evaluation.metrics.fad import FAD_MODELS, fad_metric
from evaluation.protocol import Preprocessing

log = logging.getLogger(__name__)
FAD_CACHE_VERSION = 2  # 2: embeddings only (distances are computed from them)
PANN_BATCH = 16  # clips per PANN forward pass (decoding and the frozen trace use it too)
PANN_FILES = {8000: "Cnn14_8k_mAP%3D0.416.pth", 16000: "Cnn14_16k_mAP%3D0.438.pth", 32000: "Cnn14_mAP%3D0.431.pth"}
ENCODEC_FILES = {24000: "checkpoints/encodec_24khz-d7cc33bc.th", 48000: "checkpoints/encodec_48khz-7e698e3e.th"}
# torch.hub clones harritaylor/torchvggish into the hub dir; its hubconf then fetches two weight files.
VGGISH_FILES = (
    "harritaylor_torchvggish_master",
    "checkpoints/vggish-10086976.pth",
    "checkpoints/vggish_pca_params-970ea276.pth",
)
CKPT_DIR_ENV = "ESC50_EVAL_CKPT_DIR"
PACKAGE_CLAP_SUBMODELS = ("630k-audioset", "630k", "music_audioset", "music_speech", "music_speech_audioset")


def default_ckpt_dir() -> str:
    """--ckpt-dir, else $ESC50_EVAL_CKPT_DIR, else torch.hub's directory (the package's own default)."""
    import torch

    return os.environ.get(CKPT_DIR_ENV) or torch.hub.get_dir()


def required_files(model: str, sample_rate: int, clap_checkpoint: str = "630k-audioset") -> list[str]:
    """Files (relative to the checkpoint directory) the package needs for `model` at `sample_rate`."""
    if model == "vggish":
        return list(VGGISH_FILES)
    if model == "pann":
        return [PANN_FILES[sample_rate]]
    if model == "encodec":
        return [ENCODEC_FILES[sample_rate]]
    from evaluation.clap import CLAP_CHECKPOINTS

    return [CLAP_CHECKPOINTS[clap_checkpoint][0]]


@dataclass
class FadModel:
    fad: Any  # frechet_audio_distance.FrechetAudioDistance
    name: str
    sample_rate: int
    identity: str  # model name, variant, rate and a digest of its weights: part of every cache key
    # PANN on the CPU is traced and frozen for calls of at least this many clips (see _pann_forward).
    freeze_min_clips: int = 100
    _frozen: tuple[Any, Any] | None = field(default=None, repr=False)  # ((module, samples), frozen trace)

    @property
    def metric(self) -> str:
        return fad_metric(self.name)

    def embed(
        self,
        clips: pd.DataFrame,
        seconds: float = CLIP_SECONDS,
        show_progress: bool = True,
        desc: str = "FAD",
        preprocessing: Preprocessing | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, clip index of each row): VGGish and EnCodec give several rows per clip."""
        rows, owners, failed = [], [], []
        index = 0
        batches = decoded_batches(
            clips, self.sample_rate, PANN_BATCH, seconds, f"{desc} ({self.name})", show_progress, preprocessing
        )
        forward = self._pann_forward(len(clips), round(seconds * self.sample_rate)) if self.name == "pann" else None
        for batch in batches:
            batched = self._embed_pann_batch(batch, forward) if forward else None
            if batched is not None:
                rows.append(batched)
                owners.append(np.arange(index, index + len(batch)))
                index += len(batch)
                continue
            for clip in batch:
                # One clip per call: the package swallows a failure inside its loop and returns the rest,
                # so this is the only way to know which clip it skipped.
                with contextlib.redirect_stdout(io.StringIO()) as printed:
                    try:
                        embedding = self.fad.get_embeddings([clip], sr=self.sample_rate)
                    except ValueError:  # nothing embedded: np.concatenate of an empty list
                        embedding = None
                if embedding is None or len(embedding) == 0:
                    failed.append(f"{clips['filename'].iloc[index]} ({printed.getvalue().strip()[:120]})")
                else:
                    # PANN gives one (2048,) vector per clip, which the package's own `score()` concatenates
                    # into one long 1-D array (so its statistics are those of a single scalar): keep it a row.
                    embedding = np.atleast_2d(np.asarray(embedding, dtype=np.float32))
                    rows.append(embedding)
                    owners.append(np.full(len(embedding), index))
                index += 1
        if failed:
            shown = "; ".join(failed[:3]) + (f"; and {len(failed) - 3} more" if len(failed) > 3 else "")
            raise UserError(f"{self.name} embedded {len(clips) - len(failed)} of {len(clips)} clips: {shown}")
        return np.concatenate(rows), np.concatenate(owners)

    def _pann_forward(self, clips: int, samples: int) -> Callable[[Any], Any]:
        """PANN's embedding for a batch of at most PANN_BATCH clips of `samples` samples.

        On the CPU, for `freeze_min_clips` or more, a TorchScript trace frozen for inference: batch norm
        folded into the convolutions, which are prepacked for oneDNN. 97 -> 72 ms per clip on 2 cores,
        the embeddings equal to 1e-6 (tests/test_eval_fad.py); tracing costs 1.6 s, once per model.
        Otherwise, or if tracing fails, the eager module.
        """
        import torch

        network = self.fad.model
        eager = lambda audio: network(audio, None)["embedding"]  # noqa: E731
        on_cpu = all(parameter.device.type == "cpu" for parameter in network.parameters())
        if not on_cpu or clips < self.freeze_min_clips:
            return eager
        if self._frozen is None or self._frozen[0] != (network, samples):
            try:
                self._frozen = ((network, samples), _freeze_pann(network, samples))
            except Exception as error:  # an unusual build of torch: eager is correct, only slower
                log.warning("PANN could not be frozen for inference (%s); running it eagerly", error)
                return eager
        frozen = self._frozen[1]

        def padded(audio: torch.Tensor) -> torch.Tensor:  # the trace is for PANN_BATCH clips
            missing = PANN_BATCH - len(audio)
            return frozen(torch.nn.functional.pad(audio, (0, 0, 0, missing)) if missing else audio)[: len(audio)]

        return padded

    def _embed_pann_batch(self, batch: np.ndarray, forward: Callable[[Any], Any]) -> np.ndarray | None:
        """PANN on a whole batch: what the package's `get_embeddings` computes clip by clip, about 1.8x faster
        on CPU (the model is in eval mode, so a clip's embedding does not depend on its batch). None when
        the batch fails or gives a row count or values it should not: the clip-by-clip path then names the clip.
        """
        import torch

        try:
            with torch.inference_mode():
                audio = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.fad.device)
                embeddings = forward(audio).float().cpu().numpy()
        except Exception as error:  # the per-clip path reports it, naming the clip
            log.debug("batched PANN failed (%s); embedding clip by clip", error)
            return None
        if embeddings.shape[0] != len(batch) or not np.isfinite(embeddings).all():
            return None
        return embeddings

    def distance(self, reference: np.ndarray, other: np.ndarray) -> float:
        """Frechet distance between two sets of embeddings (evaluation.metrics: the package's value, faster)."""
        return embedding_frechet_distance(reference, other)


def load_fad_model(
    name: str = "vggish",
    sample_rate: int = 0,
    ckpt_dir: str | os.PathLike = "",
    clap_checkpoint: str = "630k-audioset",
    allow_download: bool = False,
) -> FadModel:
    """The package's FrechetAudioDistance for `name`, from files in `ckpt_dir` (downloads only when allowed)."""
    if name not in FAD_MODELS:
        raise UserError(f"--fad-model '{name}' is not one of {', '.join(FAD_MODELS)}")
    sample_rate = sample_rate or FAD_MODELS[name][0]
    if sample_rate not in FAD_MODELS[name]:
        rates = ", ".join(map(str, FAD_MODELS[name]))
        raise UserError(f"--fad-sample-rate {sample_rate} is not supported by {name} (use {rates})")
    if name == "clap" and clap_checkpoint not in PACKAGE_CLAP_SUBMODELS:
        names = ", ".join(PACKAGE_CLAP_SUBMODELS)
        raise UserError(f"FAD with CLAP takes a checkpoint name the package knows ({names}), not {clap_checkpoint}")
    ckpt_dir = Path(ckpt_dir or default_ckpt_dir()).expanduser()
    missing = [f for f in required_files(name, sample_rate, clap_checkpoint) if not (ckpt_dir / f).exists()]
    if missing and not allow_download:
        raise UserError(
            f"{name} weights missing offline: put {', '.join(missing)} in {ckpt_dir} (--ckpt-dir or ${CKPT_DIR_ENV}),"
            " or run once online with --allow-download"
        )
    import torch
    from frechet_audio_distance import FrechetAudioDistance

    previous_hub_dir = torch.hub.get_dir()  # the package points torch.hub at ckpt_dir for the whole process
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fad = FrechetAudioDistance(
                ckpt_dir=str(ckpt_dir), model_name=name, submodel_name=clap_checkpoint, sample_rate=sample_rate,
                channels=2 if (name == "encodec" and sample_rate == 48000) else 1, verbose=False,
            )  # fmt: skip
    except Exception as error:
        reason = " ".join(str(error).split())[:200]
        if name == "clap":
            reason += " (CLAP also needs roberta-base in the Hugging Face cache)"
        raise UserError(f"cannot load the {name} FAD model from {ckpt_dir}: {reason}") from None
    finally:
        torch.hub.set_dir(previous_hub_dir)
    identity = f"{name}|{clap_checkpoint if name == 'clap' else ''}|{sample_rate}|{weights_digest(fad.model)}"
    if name == "pann":  # oneDNN's convolutions run about 8% faster in this layout; the values stay the same
        fad.model.to(memory_format=torch.channels_last)
    return FadModel(fad, name, sample_rate, identity)


def _freeze_pann(network: Any, samples: int) -> Any:
    import warnings

    import torch

    class Embedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, audio: torch.Tensor) -> torch.Tensor:
            return network(audio, None)["embedding"]

    example = torch.zeros(PANN_BATCH, samples)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TracerWarnings about the package's Python-side shape checks
        traced = torch.jit.trace(Embedding().eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def weights_digest(model: Any) -> str:
    """A digest of every tensor of the model: other weights, other cache entries."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


@dataclass
class ReferenceEmbeddings:
    embeddings: np.ndarray  # what every distance is computed from (evaluation.metrics.embedding_frechet_distance)
    owners: np.ndarray  # clip index of each embedding row
    targets: np.ndarray  # class of each clip
    path: Path
    from_cache: bool


def reference_cache_key(
    model: FadModel, reference: pd.DataFrame, seconds: float, preprocessing: Preprocessing | None = None
) -> str:
    payload = [FAD_CACHE_VERSION, model.identity, fingerprint(reference), seconds]
    if preprocessing is not None:
        payload.append(preprocessing.describe())
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def reference_embeddings(
    model: FadModel,
    reference: pd.DataFrame,
    cache_dir: str | os.PathLike,
    seconds: float = CLIP_SECONDS,
    show_progress: bool = True,
    preprocessing: Preprocessing | None = None,
    desc: str = "FAD reference",
) -> ReferenceEmbeddings:
    """Embeddings of a set of real clips (the reference, the ceiling, the training clips): cached."""
    key = reference_cache_key(model, reference, seconds, preprocessing)
    path = Path(cache_dir) / "fad" / f"{model.name}-{model.sample_rate}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as stored:
                return ReferenceEmbeddings(
                    stored["embeddings"], stored["owners"], stored["targets"], path, from_cache=True
                )
        except Exception as error:  # damaged file: recompute
            log.warning("ignoring unreadable FAD reference cache %s (%s)", path, error)
    embeddings, owners = model.embed(reference, seconds, show_progress, desc, preprocessing)
    targets = reference["target"].to_numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name: concurrent trials may compute the same entry; the last rename wins, intact.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    with os.fdopen(handle, "wb") as stream:
        np.savez(stream, embeddings=embeddings, owners=owners, targets=targets)
    os.replace(temporary, path)
    return ReferenceEmbeddings(embeddings, owners, targets, path, from_cache=False)


def per_class_distances(
    model: FadModel, reference: ReferenceEmbeddings, embeddings: np.ndarray, owners: np.ndarray, targets: np.ndarray,
    min_clips: int,
) -> dict[int, float]:  # fmt: skip
    """FAD per class, for the classes with at least `min_clips` clips on both sides."""
    result = {}
    reference_row_targets, row_targets = reference.targets[reference.owners], targets[owners]
    for target in sorted(set(targets.tolist())):
        if min(np.sum(reference.targets == target), np.sum(targets == target)) < min_clips:
            continue
        result[int(target)] = model.distance(
            reference.embeddings[reference_row_targets == target], embeddings[row_targets == target]
        )
    return result
