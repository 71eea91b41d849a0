"""Samplers: the diffusers schedulers that turn noise into a spectrogram, and the loop that drives them.

    ddpm      ancestral sampling (Ho et al. 2020): stochastic, needs about as many steps as training had
    ddim      deterministic (Song et al. 2021); the study's default at 50 steps
    dpmpp_2m  DPM-Solver++ second-order multistep (Lu et al. 2022): good samples in 10-25 steps
    unipc     UniPC predictor-corrector (Zhao et al. 2023), also for few steps
    euler     Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022)

Each is built from the model's saved training schedule, so its betas and `prediction_type` are the ones
the network was trained with; any of them takes any number of steps and classifier-free guidance.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from core.diffusion.guidance import guided_output
from core.diffusion.objectives import OBJECTIVES, Objective, objective_of
from core.errors import UserError


@dataclass(frozen=True)
class Sampler:
    scheduler: str  # the diffusers class, imported when first used (config validation and --help stay light)
    options: dict = field(default_factory=dict)  # set on top of the training schedule's config

    @property
    def scheduler_class(self) -> type:
        return getattr(importlib.import_module("diffusers"), self.scheduler)

    @property
    def clips_itself(self) -> bool:
        """Whether the scheduler has its own x0 clipping (`clip_sample`, to [-1, 1])."""
        return "clip_sample" in inspect.signature(self.scheduler_class.__init__).parameters

    @property
    def takes_generator(self) -> bool:
        return "generator" in inspect.signature(self.scheduler_class.step).parameters


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler("DDPMScheduler"),
    "ddim": Sampler("DDIMScheduler"),
    "dpmpp_2m": Sampler("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": Sampler("UniPCMultistepScheduler"),
    "euler": Sampler("EulerDiscreteScheduler"),
}

# How x0 is clipped at each step (sample.clip): `data_range` to the range the model was trained on, by
# `clip_to_data_range`; `legacy` as models saved before the key existed were sampled: the scheduler's own
# clip to [-1, 1] (samplers without one get [-1, 1] from `clip_to_data_range`); `none` only the final clamp.
SAMPLE_CLIPS = ("data_range", "legacy", "none")


def make_scheduler(noise_schedule: dict, name: str, steps: int, clip: str = "legacy"):
    """The sampler `name`, set to `steps` steps; its own clipping is on only for `legacy`."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler '{name}': choose from {', '.join(SAMPLERS)}")
    sampler = SAMPLERS[name]
    overrides = dict(sampler.options)
    if sampler.clips_itself and clip != "legacy":
        overrides["clip_sample"] = False
    scheduler = sampler.scheduler_class.from_config(noise_schedule, **overrides)
    scheduler.set_timesteps(steps)
    return scheduler


def clip_to_data_range(
    output: torch.Tensor,
    images: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    low: float,
    high: float,
    objective: Objective = OBJECTIVES["epsilon"],
) -> torch.Tensor:
    """The network output whose clean-spectrogram estimate is clipped to [low, high].

    diffusers' samplers clip x0 to a symmetric [-r, r], and the multistep ones not at all; a model trained
    on [0, 1] (data.normalize=false) needs [0, 1], or x0 may wander to -1, which the data never reaches.
    x0 is estimated from the output, clipped, and the output re-derived from it: any sampler stepping with
    it steps from the clipped x0. For DDPM that is exactly diffusers' own clipping; for DDIM it is its
    `use_clipped_model_output=True` (its own clip keeps the unclipped noise for the direction term), so DDIM
    samples of new normalized models differ slightly from `legacy` ones. `images` is x_t in the training
    parametrization (the scheduler's `scale_model_input`).
    """
    alpha_bar = alphas_cumprod.to(images.device)[t.long()].to(torch.float32)
    x_t = images.float()
    x0 = objective.to_x0(output.float(), x_t, alpha_bar).clamp(low, high)
    return objective.from_x0(x0, x_t, alpha_bar).to(output.dtype)


@torch.inference_mode()
def sample_spectrograms(
    model,
    labels: list[int],
    scheduler_name: str = "ddim",
    steps: int = 50,
    guidance_scale: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = False,
    clip: str = "",
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Spectrograms in [0, 1], shape (len(labels), H, W), one per requested class label, from a `DiffusionModel`.

    `clip` ("" = the model's own `sample_clip`) is how x0 is clipped at each step (config key sample.clip).
    `on_step` is called after every denoising step (progress of long batches).
    """
    from core.spectrograms import from_model_range

    if guidance_scale != 1.0 and model.null_class is None:
        raise UserError("guidance scale != 1 needs a model trained with model.class_dropout > 0")
    unet = model.unet
    device = unet.device
    height, width = model.sample_shape
    objective = objective_of(model.noise_schedule)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    step_options = {"generator": generator} if SAMPLERS[scheduler_name].takes_generator else {}
    clip = clip or model.sample_clip
    clip_range = _clip_range(model, scheduler_name, clip)
    outputs = []
    for start in tqdm(range(0, len(labels), batch_size), desc="sampling", disable=not show_progress):
        batch_labels = torch.tensor(labels[start : start + batch_size], device=device)
        scheduler = make_scheduler(model.noise_schedule, scheduler_name, steps, clip)
        noise = torch.randn((len(batch_labels), 1, height, width), generator=generator)
        images = (noise * scheduler.init_noise_sigma).to(device=device, dtype=unet.dtype)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(images, t)
            output = guided_output(unet, model_input, t, batch_labels, guidance_scale, model.null_class)
            if clip_range is not None:
                output = clip_to_data_range(output, model_input, t, scheduler.alphas_cumprod, *clip_range, objective)
            images = scheduler.step(output, t, images, **step_options).prev_sample
            if on_step is not None:
                on_step()
        outputs.append(from_model_range(images.float(), model.normalize)[:, 0].cpu())
    return torch.cat(outputs)


def _clip_range(model, scheduler_name: str, clip: str) -> tuple[float, float] | None:
    if clip == "data_range":
        return model.data_range
    if clip == "legacy" and not SAMPLERS[scheduler_name].clips_itself:
        return (-1.0, 1.0)
    return None
