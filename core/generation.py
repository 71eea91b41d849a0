"""Clips of any class from a trained model: sample spectrograms, voice them, write clips and their record.

Writes OUT/<category>/<n>.wav, OUT/manifest.csv (`file,target,category`; `file` relative to OUT), the
format evaluation reads, and OUT/generation.json (what made the clips). The command line is
`python -m training.generate`; evaluation and sweeps call `generate` directly.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core.audio import write_wav_atomic
from core.diffusion.samplers import SAMPLE_CLIPS, SAMPLERS, sample_spectrograms
from core.errors import UserError
from core.files import lock_folder, write_text_atomic
from core.progress import Progress
from core.vocoders import build_vocoder

if TYPE_CHECKING:
    from core.diffusion.model import DiffusionModel

MANIFEST_COLUMNS = ("file", "target", "category")
GENERATION_RECORD = "generation.json"  # beside the manifest: what made the clips
GENERATION_LOCK = ""  # the folder itself is flock'ed while a process writes into it (no lock file left there)


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


def generate(request: GenerationRequest, show_progress: bool = True, existing: str = "replace") -> Path:
    """Sample, invert to audio and write clips + manifest; returns the manifest's path.

    A folder that already holds exactly these clips (same model weights, same resolved settings and seed:
    its generation.json says so) is reused, and said so. Clips made otherwise are replaced (`existing=
    "replace"`, the old manifest and clips removed first, so no manifest ever lists a mix) or refused
    (`existing="refuse"`, for a folder the user named as holding this model's clips).
    """
    if request.per_class < 1:
        raise UserError(f"--per-class must be >= 1, not {request.per_class}")
    if request.scheduler is not None and request.scheduler not in SAMPLERS:
        raise UserError(f"--scheduler must be one of {', '.join(SAMPLERS)}, not {request.scheduler}")
    if request.clip not in ("",) + SAMPLE_CLIPS:
        raise UserError(f"--clip must be one of {', '.join(SAMPLE_CLIPS)}, not {request.clip}")
    from core.diffusion.model import DiffusionModel, resolve_model_folder

    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_folder = resolve_model_folder(request.model)
    model = DiffusionModel.load(model_folder, device=device)
    request = with_model_defaults(request, model)
    classes = resolve_classes(request.classes, model.categories)
    if request.steps < 1 or request.griffin_lim_iters < 1:
        raise UserError("--steps and --griffin-lim-iters must be >= 1")
    out = Path(request.out)
    fingerprint = generation_fingerprint(model_folder, request, classes, model)
    # One generation per folder at a time: two writers would mix their clips under one manifest.
    lock = lock_folder(out, GENERATION_LOCK, "another generation")
    try:
        reused = settle_previous_clips(out, fingerprint, existing)
        if reused is not None:
            return reused
        rows = make_clips(model, request, classes, out, show_progress, device)
        try:
            write_generation_record(out, request, model, fingerprint)
            return write_manifest(out, rows)
        except BaseException:  # no record or manifest: then no clips either
            for row in rows:
                (out / row["file"]).unlink(missing_ok=True)
            (out / GENERATION_RECORD).unlink(missing_ok=True)
            raise
    except OSError as error:  # a full disk mid-way: nothing half-written stays (make_clips removed its clips)
        raise UserError(f"cannot write the clips to {out}: {error.strerror or error}") from None
    finally:
        if lock is not None:
            lock.close()


def make_clips(
    model: DiffusionModel, request: GenerationRequest, classes: list[int], out: Path, show_progress: bool = True,
    device: str = "cpu",
) -> list[dict]:  # fmt: skip
    """`request.per_class` clips of each class written to out/<category>/<n>.wav; their manifest rows.

    `request` is resolved (no None left: `with_model_defaults`). Training's quick evaluation calls this too."""
    labels = [c for c in classes for _ in range(request.per_class)]
    vocoder = build_vocoder(
        request.vocoder, model.mel, iterations=request.griffin_lim_iters, momentum=request.griffin_lim_momentum,
        path=request.vocoder_path, device=device,
    )  # fmt: skip
    rows: list[dict] = []
    try:
        _write_clips(model, request, vocoder, labels, out, show_progress, device, rows)
    except BaseException:  # a failed or interrupted generation leaves none of its clips behind
        for row in rows:
            (out / row["file"]).unlink(missing_ok=True)
        raise
    return rows


def _write_clips(
    model, request, vocoder, labels: list[int], out: Path, show_progress: bool, device: str, rows: list
) -> None:
    chunk = request.batch_size
    chunks = math.ceil(len(labels) / chunk)
    # Moves per denoising step (a batch of 32 clips can take minutes on a CPU); clips written so far beside it.
    with Progress(chunks * request.steps, f"generating {len(labels)} clips", show_progress, "step") as progress:
        for start in range(0, len(labels), chunk):
            chunk_labels = labels[start : start + chunk]
            spectrograms = sample_spectrograms(
                model, chunk_labels, request.scheduler, request.steps, request.guidance_scale,
                batch_size=chunk, seed=request.seed + start, clip=request.clip,
                on_step=lambda: progress.update(1),
            )  # fmt: skip
            clips = vocoder(spectrograms.to(device), seed=request.seed)
            for offset, (label, clip) in enumerate(zip(chunk_labels, clips)):
                index = (start + offset) % request.per_class
                category = model.categories[label]
                relative = f"{category}/{index}.wav"
                write_wav_atomic(out / relative, clip, model.mel.sample_rate)
                rows.append({"file": relative, "target": label, "category": category})
            progress.update(0, clips=start + len(chunk_labels))


def model_digest(model_folder: Path) -> str:
    """SHA-256 over every file of a model folder (weights, schedule, audio.json), with their relative paths."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_folder)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def generation_fingerprint(model_folder: Path, request: GenerationRequest, classes: list[int], model) -> dict:
    """What decides the clips: the model's weights and every resolved generation setting, the seed included."""
    settings = {key: value for key, value in asdict(request).items() if key not in ("model", "out", "device")}
    return {"model_digest": model_digest(model_folder),
            "settings": {**settings, "classes": classes, "clip": request.clip or model.sample_clip}}  # fmt: skip


def fingerprint_differences(previous: dict, fingerprint: dict) -> list[str]:
    """How the clips in a folder were made differently from what is asked: `per_class 1 -> 2`, `other weights`."""
    if not previous:
        return ["no record of how they were made (no fingerprint in generation.json)"]
    differences = [] if previous.get("model_digest") == fingerprint["model_digest"] else ["other model weights"]
    old, new = previous.get("settings", {}), fingerprint["settings"]
    differences += [f"{key} {old.get(key)!r} -> {new[key]!r}" for key in new if old.get(key) != new[key]]
    return differences


def _describe(settings: dict) -> str:
    return (f"{settings['scheduler']} {settings['steps']} steps, guidance {settings['guidance_scale']}, "
            f"{settings['vocoder']}, seed {settings['seed']}, {settings['per_class']} per class")  # fmt: skip


def settle_previous_clips(out: Path, fingerprint: dict, existing: str) -> Path | None:
    """Before generating into `out`: its manifest when it already holds exactly these clips (reused, and said so);
    otherwise the clips of an earlier generation refused (`existing="refuse"`) or removed, the reason named."""
    manifest = out / "manifest.csv"
    if not manifest.is_file():
        return None
    try:
        record = json.loads((out / GENERATION_RECORD).read_text())
    except (OSError, ValueError):
        record = {}
    try:
        files = [row.get("file") or "" for row in csv.DictReader(io.StringIO(manifest.read_text()))]
    except (OSError, ValueError):
        files = []
    differences = fingerprint_differences(record.get("fingerprint", {}), fingerprint)
    if not differences and files and all((out / name).is_file() for name in files):
        print(f"reusing {len(files)} clips in {out} generated on {record.get('created', '?')} with "
              f"{_describe(fingerprint['settings'])} (same model weights and settings)", flush=True)  # fmt: skip
        return manifest
    reason = "; ".join(differences) or "some of the clips its manifest lists are missing"
    if existing == "refuse":
        raise UserError(
            f"{out} holds clips made differently ({reason}); generate with the same settings, or choose an empty folder"
        )
    print(f"replacing the {len(files)} clips in {out}: they were made differently ({reason})", flush=True)
    # The manifest and record go first: a crash below leaves no manifest listing old and new clips together.
    manifest.unlink()
    (out / GENERATION_RECORD).unlink(missing_ok=True)
    root = out.resolve()
    for name in files:
        path = (out / name).resolve()
        if name and path.is_relative_to(root) and path.suffix == ".wav":
            path.unlink(missing_ok=True)
    return None


def with_model_defaults(request: GenerationRequest, model: DiffusionModel) -> GenerationRequest:
    """The request with what it leaves open (None) taken from the model's sampling defaults."""
    defaults = {key: value for key, value in model.sampling.items() if getattr(request, key, 0) is None}
    return dataclasses.replace(request, **defaults)


def write_generation_record(
    out: Path, request: GenerationRequest, model: DiffusionModel, fingerprint: dict | None = None
) -> Path:
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
        "fingerprint": fingerprint or {},
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
