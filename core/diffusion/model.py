"""A trained model as one folder that records its whole recipe, and where to find one.

Folder layout (written by training, read by generation, evaluation and sweeps):
    unet/        the network, diffusers `save_pretrained` (config.json + safetensors weights)
    scheduler/   the training noise schedule (a DDPM config with its betas and `prediction_type`;
                 every sampler is built from it)
    audio.json   the representation (mel settings, normalization), the class names and null class, the
                 recipe it was trained with (objective, loss, weighting, schedule), its sampling defaults,
                 how the sampler clips (`sample_clip`), the real clips it trained on (`training`), its
                 MLflow run id

Loading checks that the parts agree (the UNet's sample size and the mel settings, the recipe and the
schedule), so a folder put together by hand fails with its reason instead of sampling nonsense.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from core.audio import MelSettings
from core.errors import UserError
from core.esc50 import ESC50_CATEGORIES, unsafe_class_name

MODEL_MANIFEST = "audio.json"
# How models saved before audio.json recorded them were sampled by default (generate's defaults then).
LEGACY_SAMPLING = {"scheduler": "ddim", "steps": 50, "guidance_scale": 1.0, "griffin_lim_iters": 32,
                   "vocoder": "griffin_lim", "griffin_lim_momentum": 0.99, "vocoder_path": ""}  # fmt: skip


@dataclass
class DiffusionModel:
    unet: UNet2DModel
    noise_schedule: dict  # the training schedule's config (betas, prediction_type, timestep spacing)
    mel: MelSettings
    normalize: bool
    categories: list[str] = field(default_factory=lambda: list(ESC50_CATEGORIES))
    null_class: int | None = None  # the label trained as "no class" (core.diffusion.guidance)
    mlflow_run_id: str = ""
    sample_clip: str = "data_range"  # data_range | legacy | none (config key sample.clip)
    training: dict | None = None  # core.spectrograms.training_record: None for models saved before it existed
    recipe: dict | None = None  # train.prediction, loss, weighting, schedule; None: saved before it was recorded
    sampling: dict = field(default_factory=lambda: dict(LEGACY_SAMPLING))  # generation's defaults (sample.*)

    @property
    def sample_shape(self) -> tuple[int, int]:
        """(mel bins, frames) of the spectrograms the UNet takes."""
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def data_range(self) -> tuple[float, float]:
        """The range of the spectrograms the model was trained on, in its own units."""
        return (-1.0, 1.0) if self.normalize else (0.0, 1.0)

    @property
    def prediction(self) -> str:
        return self.noise_schedule.get("prediction_type", "epsilon")

    def save(self, folder: str | os.PathLike) -> None:
        """Write under a temporary name, then swap it in: a reader never sees half a model."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            self.unet.save_pretrained(staging / "unet", safe_serialization=True)
            DDPMScheduler.from_config(self.noise_schedule).save_pretrained(staging / "scheduler")
            manifest = {
                "mel": json.loads(self.mel.to_json()),
                "normalize": self.normalize,
                "categories": self.categories,
                "null_class": self.null_class,
                "mlflow_run_id": self.mlflow_run_id,
                "sample_clip": self.sample_clip,
                "training": self.training,
                "recipe": self.recipe,
                "sampling": self.sampling,
            }
            (staging / MODEL_MANIFEST).write_text(json.dumps(manifest, indent=2))
            if folder.exists():
                retired = folder.with_name(f".{folder.name}.old")
                shutil.rmtree(retired, ignore_errors=True)
                os.replace(folder, retired)
                os.replace(staging, folder)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> DiffusionModel:
        folder = Path(folder)
        manifest_path = folder / MODEL_MANIFEST
        if not manifest_path.is_file():
            raise UserError(
                f"{folder} is not a saved model (no {MODEL_MANIFEST}; expected unet/, scheduler/, audio.json)"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"model {folder}: {MODEL_MANIFEST} is not readable JSON ({error})") from None
        check_manifest(manifest, manifest_path)  # before anything is loaded or allocated from it
        try:
            unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True)
            schedule = dict(DDPMScheduler.from_pretrained(folder / "scheduler").config)
        except Exception as error:
            reason = " ".join(str(error).split())[:300]
            raise UserError(f"cannot load the model in {folder}: {reason}") from None
        model = cls(
            unet=unet.to(device).eval(),
            noise_schedule=schedule,
            mel=MelSettings(**manifest["mel"]),
            normalize=manifest["normalize"],
            categories=manifest["categories"],
            null_class=manifest.get("null_class"),
            mlflow_run_id=manifest.get("mlflow_run_id", ""),
            # Saved before the key existed: the scheduler's own clipping to [-1, 1], as they were sampled then.
            sample_clip=manifest.get("sample_clip", "legacy"),
            training=manifest.get("training"),
            recipe=manifest.get("recipe"),
            sampling={**LEGACY_SAMPLING, **(manifest.get("sampling") or {})},
        )
        model.check(folder)
        return model

    def check(self, folder: str | os.PathLike) -> None:
        """The parts agree: what the UNet takes is what the mel settings make, the recipe is the schedule's."""
        expected = self.mel.shape
        if self.sample_shape != expected:
            raise UserError(
                f"model {folder}: the UNet takes {self.sample_shape[0]}x{self.sample_shape[1]} spectrograms but "
                f"its mel settings ({MODEL_MANIFEST}) make {expected[0]}x{expected[1]}"
            )
        if self.recipe and self.recipe.get("prediction", self.prediction) != self.prediction:
            raise UserError(
                f"model {folder}: {MODEL_MANIFEST} says it predicts '{self.recipe['prediction']}' but its "
                f"scheduler/ says '{self.prediction}'"
            )
        embeddings = self.unet.config.num_class_embeds
        if embeddings is not None and len(self.categories) + (self.null_class is not None) != embeddings:
            raise UserError(
                f"model {folder}: {len(self.categories)} classes"
                f"{' and a null class' if self.null_class is not None else ''} but the UNet has {embeddings} "
                "class embeddings"
            )


# What a model folder's audio.json may say: it comes with downloaded models (`runs:/...`), so nothing in it is
# trusted. Class names become file names (OUT/<class>/<n>.wav): no separators, no leading dot, no control
# characters. Mel settings are bounded (`resolution=2**20` or `clip_seconds=1e7` would allocate terabytes).
_MEL_BOUNDS = {"sample_rate": (1000, 384_000), "clip_seconds": (0.1, 600.0), "resolution": (2, 4096),
               "n_fft": (0, 65_536), "top_db": (1.0, 300.0), "mel_bins": (0, 4096), "frames": (0, 16_384),
               "hop": (0, 1_000_000), "f_min": (0.0, 192_000.0), "f_max": (0.0, 192_000.0)}  # fmt: skip


def check_manifest(manifest, path: Path) -> None:
    """audio.json's types, lengths and ranges, each problem named (exit 2) before any of it is used."""
    from core.audio import LEVELS, SCALES

    def fail(key: str, problem: str) -> None:
        raise UserError(f"{path}: '{key}' {problem}")

    if not isinstance(manifest, dict):
        fail("(top level)", "is not a JSON object")
    for key, kind in (("mel", dict), ("normalize", bool), ("categories", list)):
        if not isinstance(manifest.get(key), kind):
            fail(key, f"is missing or not a {kind.__name__} (it is {type(manifest.get(key)).__name__})")
    mel = manifest["mel"]
    fields = {f.name for f in dataclasses.fields(MelSettings)}
    unknown = sorted(set(mel) - fields)
    if unknown:
        fail(f"mel.{unknown[0]}", f"is not a mel setting (those are {', '.join(sorted(fields))})")
    for key, (low, high) in _MEL_BOUNDS.items():
        value = mel.get(key, low)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail(f"mel.{key}", f"is not a finite number: {value!r}")
        if not low <= value <= high:
            fail(f"mel.{key}", f"is {value}, outside {low}..{high}")
    for key, allowed in (("level", LEVELS), ("scale", SCALES)):
        if mel.get(key, allowed[0]) not in allowed:
            fail(f"mel.{key}", f"is {mel.get(key)!r}, not one of {', '.join(allowed)}")
    categories = manifest["categories"]
    if not categories or len(categories) > 10_000:
        fail("categories", f"holds {len(categories)} names (1 to 10,000)")
    for index, name in enumerate(categories):
        if unsafe_class_name(name):
            fail(f"categories[{index}]", f"{name!r} is not a class name a file may carry (no /, \\, leading dot "
                 "or control characters, at most 200 characters)")  # fmt: skip
    if len(set(categories)) != len(categories):
        fail("categories", "names a class twice")
    null = manifest.get("null_class")
    if null is not None and (isinstance(null, bool) or not isinstance(null, int) or not 0 <= null <= len(categories)):
        fail("null_class", f"is {null!r}, not a class index or null")
    for key in ("sampling", "recipe", "training"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            fail(key, "is not a JSON object")


def resolve_model_folder(model: str) -> Path:
    """A training output_dir, a saved model folder, or an MLflow URI (`runs:/ID/model`, `models:/...`)."""
    if "://" in model or model.startswith(("runs:/", "models:/")):
        import mlflow

        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=model))
        except Exception as error:
            raise UserError(
                f"cannot download model {model} from MLflow: {' '.join(str(error).split())[:300]}"
            ) from None
    path = Path(model).expanduser()
    if (path / MODEL_MANIFEST).is_file():
        return path
    if (path / "model" / MODEL_MANIFEST).is_file():
        return path / "model"
    raise UserError(f"no model at {model}: give a training output_dir, a saved model folder or an MLflow URI")
