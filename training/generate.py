"""Generate clips of any class from a trained model.

    python -m training.generate --model outputs/esc50_64 --per-class 40 --out generated/

Writes OUT/<category>/<n>.wav, OUT/manifest.csv (`file,target,category`; `file` relative to OUT), the
format `evaluation.evaluate --generated` reads, and OUT/generation.json (what made the clips).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.audio import MelTransform, write_wav_atomic
from core.config import SAMPLE_CLIPS
from core.errors import UserError, exit_on_user_error
from core.esc50 import ESC50_CATEGORIES
from core.files import write_text_atomic
from core.pipeline import GENERATION_RECORD, DiffusionModel, resolve_model_folder, sample_spectrograms

MANIFEST_COLUMNS = ("file", "target", "category")


@dataclass
class GenerationRequest:
    model: str
    out: str
    per_class: int = 40
    classes: list[int] | None = None  # None = all 50
    scheduler: str = "ddim"
    steps: int = 50
    guidance_scale: float = 1.0
    batch_size: int = 32
    griffin_lim_iters: int = 32
    seed: int = 0
    device: str = ""  # "" = CUDA when present
    clip: str = ""  # how the sampler clips x0 (sample.clip: data_range, legacy, none); "" = the model's own


def generate(request: GenerationRequest, show_progress: bool = True) -> Path:
    """Sample, invert to audio and write clips + manifest; returns the manifest's path."""
    if request.per_class < 1:
        raise UserError(f"--per-class must be >= 1, not {request.per_class}")
    if request.scheduler not in ("ddim", "ddpm"):
        raise UserError(f"--scheduler must be ddim or ddpm, not {request.scheduler}")
    if request.clip not in ("",) + SAMPLE_CLIPS:
        raise UserError(f"--clip must be one of {', '.join(SAMPLE_CLIPS)}, not {request.clip}")
    classes = list(range(len(ESC50_CATEGORIES))) if request.classes is None else request.classes
    bad = [c for c in classes if not 0 <= c < len(ESC50_CATEGORIES)]
    if bad:
        raise UserError(f"--classes: {bad[0]} is not an ESC-50 class (0..{len(ESC50_CATEGORIES) - 1})")
    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = DiffusionModel.load(resolve_model_folder(request.model), device=device)
    out = Path(request.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --out {out}: {error.strerror or error}") from None

    labels = [c for c in classes for _ in range(request.per_class)]
    transform = MelTransform(model.mel)
    rows = []
    chunk = request.batch_size
    with tqdm(total=len(labels), desc="generating clips", disable=not show_progress) as progress:
        for start in range(0, len(labels), chunk):
            chunk_labels = labels[start : start + chunk]
            spectrograms = sample_spectrograms(
                model, chunk_labels, request.scheduler, request.steps, request.guidance_scale,
                batch_size=chunk, seed=request.seed + start, clip=request.clip,
            )  # fmt: skip
            clips = transform.audio(spectrograms.to(device), iterations=request.griffin_lim_iters, seed=request.seed)
            for offset, (label, clip) in enumerate(zip(chunk_labels, clips)):
                index = (start + offset) % request.per_class
                category = model.categories[label]
                relative = f"{category}/{index}.wav"
                write_wav_atomic(out / relative, clip, model.mel.sample_rate)
                rows.append({"file": relative, "target": label, "category": category})
            progress.update(len(chunk_labels))
    write_generation_record(out, request, model)
    return write_manifest(out, rows)


def write_generation_record(out: Path, request: GenerationRequest, model: DiffusionModel) -> Path:
    """generation.json: what made these clips. Evaluation reads the model's training record and mel settings
    from it (its protocol keeps the training clips out of the reference; its representation row inverts
    real clips the same way)."""
    settings = {key: value for key, value in asdict(request).items() if key not in ("out", "device")}
    record = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "sample_clip": request.clip or model.sample_clip,
        "mel": json.loads(model.mel.to_json()),
        "normalize": model.normalize,
        "griffin_lim_iters": request.griffin_lim_iters,
        "training": model.training,
        "mlflow_run_id": model.mlflow_run_id,
    }
    return write_text_atomic(out / GENERATION_RECORD, json.dumps(record, indent=2))


def write_manifest(out: Path, rows: list[dict]) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(MANIFEST_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(out / "manifest.csv", text.getvalue())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="training output_dir, saved model folder, or MLflow URI (runs:/ID/model)"
    )
    parser.add_argument("--out", required=True, help="folder for OUT/<category>/<n>.wav and OUT/manifest.csv")
    parser.add_argument("--per-class", type=int, default=40, help="clips per class (default 40, the study's)")
    parser.add_argument("--classes", help="comma-separated class ids or names (default: all 50)")
    parser.add_argument("--scheduler", default="ddim", choices=["ddim", "ddpm"])
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (1 = none)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--griffin-lim-iters", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip", default="", choices=list(SAMPLE_CLIPS),
                        help="x0 clipping at each step (default: the model's own sample.clip)")  # fmt: skip
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    return parser.parse_args(argv)


def parse_classes(text: str | None) -> list[int] | None:
    if not text:
        return None
    classes = []
    for item in text.split(","):
        item = item.strip()
        if item.isdigit():
            classes.append(int(item))
        elif item in ESC50_CATEGORIES:
            classes.append(ESC50_CATEGORIES.index(item))
        else:
            raise UserError(f"--classes: '{item}' is neither a class id nor an ESC-50 category")
    return list(dict.fromkeys(classes))  # '0,dog' names one class once


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    request = GenerationRequest(
        model=args.model, out=args.out, per_class=args.per_class, classes=parse_classes(args.classes),
        scheduler=args.scheduler, steps=args.steps, guidance_scale=args.guidance_scale, batch_size=args.batch_size,
        griffin_lim_iters=args.griffin_lim_iters, seed=args.seed, device=args.device, clip=args.clip,
    )  # fmt: skip
    manifest = generate(request)
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
