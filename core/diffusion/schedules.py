"""The noise schedule: how much noise each of the training timesteps adds (betas, hence alpha-bar).

    linear             DDPM's betas 1e-4 .. 0.02 (the study's)
    scaled_linear      linear in sqrt(beta) (Stable Diffusion's)
    squaredcos_cap_v2  the cosine schedule (Nichol & Dhariwal 2021)

`zero_terminal_snr` rescales the betas so the last timestep is pure noise (alpha-bar = 0; Lin et al.
2024, diffusers' `rescale_betas_zero_snr`), and makes samplers space their timesteps `trailing`, so that
sampling starts at that last timestep. A network cannot predict epsilon from pure noise, so it needs
v_prediction or sample (validated in core.config).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusers import DDPMScheduler

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def noise_schedule(
    num_train_timesteps: int, beta_schedule: str, prediction: str, zero_terminal_snr: bool = False
) -> DDPMScheduler:
    """The training schedule; saved with the model (scheduler/), every sampler is built from its config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction,
        rescale_betas_zero_snr=zero_terminal_snr,
        # diffusers' default ("leading") for the schedules models were trained with before this module.
        timestep_spacing="trailing" if zero_terminal_snr else "leading",
    )
