"""What the network predicts from a noisy spectrogram x_t = sqrt(a) x0 + sqrt(1 - a) eps (a = alpha-bar at t).

    epsilon        the noise eps (DDPM, Ho et al. 2020; the study's choice)
    v_prediction   v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022); well defined at zero terminal SNR
    sample         the clean spectrogram x0 itself

Each objective names its diffusers `prediction_type` (saved in the model's scheduler config, so every
sampler reads the network's output the way it was trained), its training target, the conversions to and
from an x0 estimate (the sampler's data-range clipping works on x0), and its min-SNR weight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import DDPMScheduler


class Objective:
    name: str  # the config value (train.prediction) and diffusers' prediction_type

    def target(self, schedule: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_x0(self, output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_x0(self, x0: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def min_snr_weight(self, snr: torch.Tensor, gamma: float) -> torch.Tensor:
        """Hang et al. 2023: the x0-space weight min(SNR, gamma), expressed in this objective's units."""
        raise NotImplementedError


class Epsilon(Objective):
    name = "epsilon"

    def target(self, schedule, x0, noise, t):
        return noise

    def to_x0(self, output, x_t, alpha_bar):
        return (x_t - (1.0 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()

    def from_x0(self, x0, x_t, alpha_bar):
        return (x_t - alpha_bar.sqrt() * x0) / (1.0 - alpha_bar).sqrt()

    def min_snr_weight(self, snr, gamma):
        return snr.clamp(max=gamma) / snr  # an eps error is an x0 error / SNR


class VPrediction(Objective):
    name = "v_prediction"

    def target(self, schedule, x0, noise, t):
        return schedule.get_velocity(x0, noise, t)

    def to_x0(self, output, x_t, alpha_bar):
        return alpha_bar.sqrt() * x_t - (1.0 - alpha_bar).sqrt() * output

    def from_x0(self, x0, x_t, alpha_bar):
        return (alpha_bar.sqrt() * x_t - x0) / (1.0 - alpha_bar).sqrt()

    def min_snr_weight(self, snr, gamma):
        return snr.clamp(max=gamma) / (snr + 1.0)  # a v error is an x0 error / (SNR + 1)


class Sample(Objective):
    name = "sample"

    def target(self, schedule, x0, noise, t):
        return x0

    def to_x0(self, output, x_t, alpha_bar):
        return output

    def from_x0(self, x0, x_t, alpha_bar):
        return x0

    def min_snr_weight(self, snr, gamma):
        return snr.clamp(max=gamma)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (Epsilon(), VPrediction(), Sample())}


def objective_of(noise_schedule: dict) -> Objective:
    """The objective a saved schedule was trained with (models saved before the key existed: epsilon)."""
    return OBJECTIVES[noise_schedule.get("prediction_type", "epsilon")]
