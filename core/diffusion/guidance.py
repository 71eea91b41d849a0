"""Classifier-free guidance (Ho & Salimans 2022) and the null-class convention it needs.

The convention, in one place: a model trained with `model.class_dropout > 0` has one class embedding
more than it has classes, and that last label (index `num_classes`) means "no class". Training shows it
in place of the true label with probability `class_dropout`; sampling with a guidance scale s mixes the
two predictions as uncond + s * (cond - uncond), so s = 1 is plain conditional sampling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import UNet2DModel


def num_class_embeddings(num_classes: int, class_dropout: float) -> int:
    return num_classes + (1 if class_dropout > 0 else 0)


def null_class(num_class_embeds: int, class_dropout: float) -> int | None:
    """The "no class" label of a UNet with `num_class_embeds` embeddings, None when it was trained without one."""
    return num_class_embeds - 1 if class_dropout > 0 else None


def drop_labels(labels: torch.Tensor, class_dropout: float, null_label: int | None) -> torch.Tensor:
    """Training: each label replaced by the null class with probability `class_dropout`."""
    if class_dropout <= 0 or null_label is None:
        return labels
    dropped = torch.rand(labels.shape, device=labels.device) < class_dropout
    return torch.where(dropped, torch.full_like(labels, null_label), labels)


def guided_output(
    unet: UNet2DModel, images: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, scale: float, null_label: int | None
) -> torch.Tensor:
    """The network's output for `labels`, guided with `scale` (conditional and unconditional in one batch)."""
    if unet.config.num_class_embeds is None:  # an unconditional UNet (bench/: the AudioDiffusionPipeline comparison)
        return unet(images, t).sample
    if scale == 1.0:
        return unet(images, t, class_labels=labels).sample
    both = unet(
        torch.cat([images, images]), t, class_labels=torch.cat([labels, torch.full_like(labels, null_label)])
    ).sample
    conditional, unconditional = both.chunk(2)
    return unconditional + scale * (conditional - unconditional)
