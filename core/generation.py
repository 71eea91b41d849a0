"""Clips of any class from a trained model: sample spectrograms, voice them, write clips and their record.

Writes OUT/<category>/<n>.wav, OUT/manifest.csv (`file,target,category`; `file` relative to OUT), the
format evaluation reads, and OUT/generation.json (what made the clips). The command line is
`python -m training.generate`; evaluation and sweeps call `generate` directly.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from core.audio import write_wav_atomic
from core.diffusion.samplers import SAMPLE_CLIPS, SAMPLERS, sample_spectrograms
from core.errors import UserError
from core.files import write_text_atomic
from core.vocoders import build_vocoder

if TYPE_CHECKING:
    from core.diffusion.model import DiffusionModel

MANIFEST_COLUMNS = ("file", "target", "category")
GENERATION_RECORD = "generation.json"  # beside the manifest: what made the clips


@dataclass
class GenerationRequest:
    model: str
    out: str
    per_class: int = 40
    classes: list[int | str] | None = None  # ids or names of the model's classes; None = all of them
    # None: the model's own sampling defaults (audio.json `sampling`, its config's sample.*).
    scheduler: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    batch_size: int = 32
    vocoder: str | None = None  # griffin_lim | hifigan
    griffin_lim_iters: int | None = None
    griffin_lim_momentum: float | None = None
    vocoder_path: str | None = None  # hifigan: its checkpoint (a folder, or a hub id in the local cache)
    seed: int = 0
    device: str = ""  # "" = CUDA when present
    clip: str = ""  # how the sampler clips x0 (sample.clip: data_range, legacy, none); "" = the model's own


def generate(request: GenerationRequest, show_progress: bool = True) -> Path:
    """Sample, invert to audio and write clips + manifest; returns the manifest's path."""
    if request.per_class < 1:
        raise UserError(f"--per-class must be >= 1, not {request.per_class}")
    if request.scheduler is not None and request.scheduler not in SAMPLERS:
        raise UserError(f"--scheduler must be one of {', '.join(SAMPLERS)}, not {request.scheduler}")
    if request.clip not in ("",) + SAMPLE_CLIPS:
        raise UserError(f"--clip must be one of {', '.join(SAMPLE_CLIPS)}, not {request.clip}")
    from core.diffusion.model import DiffusionModel, resolve_model_folder

    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = DiffusionModel.load(resolve_model_folder(request.model), device=device)
    request = with_model_defaults(request, model)
    classes = resolve_classes(request.classes, model.categories)
    if request.steps < 1 or request.griffin_lim_iters < 1:
        raise UserError("--steps and --griffin-lim-iters must be >= 1")
    out = Path(request.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --out {out}: {error.strerror or error}") from None

    labels = [c for c in classes for _ in range(request.per_class)]
    vocoder = build_vocoder(
        request.vocoder, model.mel, iterations=request.griffin_lim_iters, momentum=request.griffin_lim_momentum,
        path=request.vocoder_path, device=device,
    )  # fmt: skip
    rows = []
    chunk = request.batch_size
    with tqdm(total=len(labels), desc="generating clips", disable=not show_progress) as progress:
        for start in range(0, len(labels), chunk):
            chunk_labels = labels[start : start + chunk]
            spectrograms = sample_spectrograms(
                model, chunk_labels, request.scheduler, request.steps, request.guidance_scale,
                batch_size=chunk, seed=request.seed + start, clip=request.clip,
            )  # fmt: skip
            clips = vocoder(spectrograms.to(device), seed=request.seed)
            for offset, (label, clip) in enumerate(zip(chunk_labels, clips)):
                index = (start + offset) % request.per_class
                category = model.categories[label]
                relative = f"{category}/{index}.wav"
                write_wav_atomic(out / relative, clip, model.mel.sample_rate)
                rows.append({"file": relative, "target": label, "category": category})
            progress.update(len(chunk_labels))
    write_generation_record(out, request, model)
    return write_manifest(out, rows)


def with_model_defaults(request: GenerationRequest, model: DiffusionModel) -> GenerationRequest:
    """The request with what it leaves open (None) taken from the model's sampling defaults."""
    defaults = {key: value for key, value in model.sampling.items() if getattr(request, key, 0) is None}
    return dataclasses.replace(request, **defaults)


def write_generation_record(out: Path, request: GenerationRequest, model: DiffusionModel) -> Path:
    """generation.json: what made these clips. Evaluation reads the model's training record and mel settings
    from it (its protocol keeps the training clips out of the reference; its representation row inverts
    real clips the same way)."""
    settings = {key: value for key, value in asdict(request).items() if key not in ("out", "device")}
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "sample_clip": request.clip or model.sample_clip,
        "prediction": model.prediction,
        "recipe": model.recipe,
        "mel": json.loads(model.mel.to_json()),
        "normalize": model.normalize,
        "griffin_lim_iters": request.griffin_lim_iters,
        "vocoder": request.vocoder,
        "griffin_lim_momentum": request.griffin_lim_momentum,
        "vocoder_path": request.vocoder_path,
        "training": model.training,
        "categories": model.categories,
        "mlflow_run_id": model.mlflow_run_id,
    }
    return write_text_atomic(out / GENERATION_RECORD, json.dumps(record, indent=2))


def write_manifest(out: Path, rows: list[dict]) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(MANIFEST_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(out / "manifest.csv", text.getvalue())


def parse_classes(text: str | None) -> list[int | str] | None:
    """`--classes 0,dog,rain`: ids and names, resolved against the model's own classes by `generate`."""
    if not text:
        return None
    return [int(item) if item.strip().isdigit() else item.strip() for item in text.split(",") if item.strip()]


def resolve_classes(requested: list[int | str] | None, categories: list[str]) -> list[int]:
    """Class ids from ids or names of the model's class set (all of them for None), each once."""
    if requested is None:
        return list(range(len(categories)))
    classes = []
    for item in requested:
        if isinstance(item, int) and 0 <= item < len(categories):
            classes.append(item)
        elif isinstance(item, str) and item in categories:
            classes.append(categories.index(item))
        else:
            shown = ", ".join(categories[:10]) + (", ..." if len(categories) > 10 else "")
            raise UserError(
                f"--classes: '{item}' is neither a class id 0..{len(categories) - 1} nor a class of this model "
                f"({shown})"
            )
    return list(dict.fromkeys(classes))  # '0,dog' names one class once
