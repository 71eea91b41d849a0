"""The training loss: the objective's target, a norm (train.loss), and a per-sample weight (train.loss_weighting).

The weighting is applied per sample before the batch mean, so that it means the same for either norm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import DDPMScheduler

from core.diffusion.guidance import drop_labels
from core.diffusion.objectives import OBJECTIVES, Objective

# Per-element error of the prediction, averaged over each sample. l2 is the DDPM loss; l1 the Palette ablation.
LOSS_NORMS = {
    "l1": lambda prediction, target: (prediction - target).abs(),
    "l2": lambda prediction, target: (prediction - target).square(),
}


def no_weighting(objective: Objective, snr: torch.Tensor, gamma: float) -> torch.Tensor:
    return torch.ones_like(snr)


def min_snr_weighting(objective: Objective, snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): the easy, low-noise timesteps stop dominating the gradient."""
    return objective.min_snr_weight(snr, gamma)


LOSS_WEIGHTINGS = {"none": no_weighting, "min_snr": min_snr_weighting}


def diffusion_loss(
    unet: torch.nn.Module,
    schedule: DDPMScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    prediction: str,
    loss: str,
    weighting: str = "none",
    min_snr_gamma: float = 5.0,
    class_dropout: float = 0.0,
    null_label: int | None = None,
) -> torch.Tensor:
    """Noise the images at random timesteps, predict the objective's target, weigh each sample's error."""
    objective = OBJECTIVES[prediction]
    noise = torch.randn_like(images)
    timesteps = torch.randint(0, schedule.config.num_train_timesteps, (images.shape[0],), device=images.device)
    noisy = schedule.add_noise(images, noise, timesteps)
    labels = drop_labels(labels, class_dropout, null_label)
    output = unet(noisy, timesteps, class_labels=labels).sample
    target = objective.target(schedule, images, noise, timesteps)
    per_sample = LOSS_NORMS[loss](output.float(), target.float()).flatten(1).mean(dim=1)
    if weighting == "none":
        return per_sample.mean()
    from diffusers.training_utils import compute_snr

    weights = LOSS_WEIGHTINGS[weighting](objective, compute_snr(schedule, timesteps), min_snr_gamma)
    return (per_sample * weights).mean()
