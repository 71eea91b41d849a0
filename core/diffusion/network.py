"""The network: a diffusers `UNet2DModel` whose class embedding joins the time embedding."""

from __future__ import annotations

from diffusers import UNet2DModel

from core.config import ModelConfig
from core.diffusion.guidance import num_class_embeddings
from core.esc50 import NUM_CLASSES


def build_unet(model: ModelConfig, shape: int | tuple[int, int], num_classes: int = NUM_CLASSES) -> UNet2DModel:
    """A one-channel UNet over spectrograms of `shape` (mel bins, frames); an int N means N x N.

    Attention sits at the `attention_levels` lowest resolutions and in the mid-block, as in the
    diffusers unconditional example; `attention=False` removes all of it (the study's ablation).
    """
    levels = len(model.block_channels)
    with_attention = [model.attention and level >= levels - model.attention_levels for level in range(levels)]
    down_blocks = tuple("AttnDownBlock2D" if attn else "DownBlock2D" for attn in with_attention)
    up_blocks = tuple("AttnUpBlock2D" if attn else "UpBlock2D" for attn in reversed(with_attention))
    return UNet2DModel(
        # An int for square spectrograms, as every model before non-square ones saved it.
        sample_size=shape if isinstance(shape, int) or shape[0] != shape[1] else shape[0],
        in_channels=1,
        out_channels=1,
        layers_per_block=model.layers_per_block,
        block_out_channels=tuple(model.block_channels),
        down_block_types=down_blocks,
        up_block_types=up_blocks,
        add_attention=model.attention,
        attention_head_dim=model.attention_head_dim,
        norm_num_groups=model.norm_groups,
        dropout=model.dropout,
        num_class_embeds=num_class_embeddings(num_classes, model.class_dropout),
    )
