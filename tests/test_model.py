"""The model factory: attention on/off, class conditioning."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention

from core.config import ModelConfig
from core.diffusion.network import build_unet


def _attention_modules(model: torch.nn.Module) -> int:
    return sum(isinstance(module, Attention) for module in model.modules())


def test_attention_flag_adds_or_removes_every_attention_block() -> None:
    config = ModelConfig(block_channels=[16, 32, 32], layers_per_block=1, norm_groups=8, attention_levels=2)
    with_attention = build_unet(config, 32)
    config.attention = False
    without = build_unet(config, 32)
    assert _attention_modules(with_attention) > 0
    assert _attention_modules(without) == 0
    assert without.mid_block.attentions[0] is None  # the mid-block's attention goes too
    assert with_attention.config.num_class_embeds == 50


def test_class_labels_change_the_prediction() -> None:
    torch.manual_seed(0)
    model = build_unet(ModelConfig(block_channels=[16, 32], layers_per_block=1, norm_groups=8), 16).eval()
    images, timesteps = torch.randn(2, 1, 16, 16), torch.tensor([10, 10])
    with torch.no_grad():
        dog = model(images, timesteps, class_labels=torch.tensor([0, 0])).sample
        rain = model(images, timesteps, class_labels=torch.tensor([10, 10])).sample
        dog_again = model(images, timesteps, class_labels=torch.tensor([0, 0])).sample
    assert dog.shape == (2, 1, 16, 16)
    assert not torch.allclose(dog, rain, atol=1e-4)
    torch.testing.assert_close(dog, dog_again)


def test_class_dropout_adds_the_null_class() -> None:
    config = ModelConfig(block_channels=[16, 32], layers_per_block=1, norm_groups=8, class_dropout=0.1)
    assert build_unet(config, 16).config.num_class_embeds == 51
