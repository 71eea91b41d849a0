"""A trained model as one folder, and class-conditional sampling from it.

Folder layout (written by training, read by generation, evaluation and sweeps):
    unet/        diffusers `save_pretrained` (config.json + safetensors weights)
    scheduler/   the training noise schedule (DDPM config; DDIM reads the same)
    audio.json   mel settings, normalization, class names, guidance support, MLflow run id, how the
                 sampler clips (`sample_clip`) and which real clips it trained on (`training`)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from core.audio import MelSettings
from core.errors import UserError
from core.esc50 import ESC50_CATEGORIES

MODEL_MANIFEST = "audio.json"
GENERATION_RECORD = "generation.json"  # beside generated clips' manifest: what made them (written by generate)


@dataclass
class DiffusionModel:
    unet: UNet2DModel
    noise_schedule: dict
    mel: MelSettings
    normalize: bool
    categories: list[str] = field(default_factory=lambda: list(ESC50_CATEGORIES))
    null_class: int | None = None  # the label trained as "no class" (classifier-free guidance)
    mlflow_run_id: str = ""
    sample_clip: str = "data_range"  # data_range | legacy | none (config key sample.clip)
    training: dict | None = None  # core.spectrograms.training_record: None for models saved before it existed

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
            unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True)
            schedule = dict(DDPMScheduler.from_pretrained(folder / "scheduler").config)
        except Exception as error:
            reason = " ".join(str(error).split())[:300]
            raise UserError(f"cannot load the model in {folder}: {reason}") from None
        return cls(
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
        )

    @property
    def data_range(self) -> tuple[float, float]:
        """The range of the spectrograms the model was trained on, in its own units."""
        return (-1.0, 1.0) if self.normalize else (0.0, 1.0)


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


def make_scheduler(noise_schedule: dict, name: str, steps: int, clip: str = "legacy") -> DDPMScheduler | DDIMScheduler:
    """The sampler; with `clip` other than `legacy` its own clipping is off (`clip_to_data_range` does it)."""
    scheduler_class = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[name]
    overrides = {} if clip == "legacy" else {"clip_sample": False}
    scheduler = scheduler_class.from_config(noise_schedule, **overrides)
    scheduler.set_timesteps(steps)
    return scheduler


def clip_to_data_range(
    noise: torch.Tensor, images: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """The noise prediction whose clean-spectrogram estimate is clipped to [low, high].

    diffusers' samplers clip x0 to a symmetric [-r, r]; a model trained on [0, 1] (data.normalize=false)
    needs [0, 1], or x0 may wander to -1, which the data never reaches. x0 = (x_t - sqrt(1-a) eps) / sqrt(a)
    is clipped, and the noise is re-derived from it: a sampler stepping with that noise steps from the
    clipped x0, in both normalization modes alike. For DDPM that is exactly diffusers' own clipping; for
    DDIM it is its `use_clipped_model_output=True` (its own clip keeps the unclipped noise for the
    direction term), so DDIM samples of new normalized models differ slightly from `legacy` ones.
    """
    alpha_bar = alphas_cumprod.to(images.device)[t].to(torch.float32)
    signal, noise_level = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
    x0 = ((images.float() - noise_level * noise.float()) / signal).clamp(low, high)
    return ((images.float() - signal * x0) / noise_level).to(noise.dtype)


@torch.inference_mode()
def sample_spectrograms(
    model: DiffusionModel,
    labels: list[int],
    scheduler_name: str = "ddim",
    steps: int = 50,
    guidance_scale: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = False,
    clip: str = "",
) -> torch.Tensor:
    """Spectrograms in [0, 1], shape (len(labels), R, R), one per requested class label.

    `clip` ("" = the model's own `sample_clip`) is how x0 is clipped at each step (config key sample.clip).
    """
    from core.spectrograms import from_model_range

    if guidance_scale != 1.0 and model.null_class is None:
        raise UserError("guidance scale != 1 needs a model trained with model.class_dropout > 0")
    unet = model.unet
    device = unet.device
    size = unet.config.sample_size
    generator = torch.Generator(device="cpu").manual_seed(seed)
    outputs = []
    batches = range(0, len(labels), batch_size)
    clip = clip or model.sample_clip
    for start in tqdm(batches, desc="sampling", disable=not show_progress):
        batch_labels = torch.tensor(labels[start : start + batch_size], device=device)
        scheduler = make_scheduler(model.noise_schedule, scheduler_name, steps, clip)
        noise = torch.randn((len(batch_labels), 1, size, size), generator=generator)
        images = noise.to(device=device, dtype=unet.dtype)
        for t in scheduler.timesteps:
            prediction = _predict_noise(unet, images, t, batch_labels, guidance_scale, model.null_class)
            if clip == "data_range":
                prediction = clip_to_data_range(prediction, images, t, scheduler.alphas_cumprod, *model.data_range)
            images = scheduler.step(prediction, t, images, generator=generator).prev_sample
        outputs.append(from_model_range(images.float(), model.normalize)[:, 0].cpu())
    return torch.cat(outputs)


def _predict_noise(
    unet: UNet2DModel, images: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, scale: float, null_class: int | None
) -> torch.Tensor:
    if unet.config.num_class_embeds is None:  # an unconditional UNet (bench/: the AudioDiffusionPipeline comparison)
        return unet(images, t).sample
    if scale == 1.0:
        return unet(images, t, class_labels=labels).sample
    # Classifier-free guidance: conditional and unconditional predictions in one batch.
    both = unet(
        torch.cat([images, images]), t, class_labels=torch.cat([labels, torch.full_like(labels, null_class)])
    ).sample
    conditional, unconditional = both.chunk(2)
    return unconditional + scale * (conditional - unconditional)
