"""Sampling alike in both normalization modes, old models as they were, and randomness that stays in its lane."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from core.audio import MelSettings, MelTransform
from core.config import ModelConfig, sample_seed
from core.diffusion.model import DiffusionModel
from core.diffusion.network import build_unet
from core.diffusion.samplers import clip_to_data_range, make_scheduler, sample_spectrograms
from core.rng import seeded


def tiny_model(normalize: bool, sample_clip: str = "data_range") -> DiffusionModel:
    torch.manual_seed(0)
    unet = build_unet(ModelConfig(block_channels=[8, 16], layers_per_block=1, norm_groups=8), 16).eval()
    schedule = dict(DDPMScheduler(num_train_timesteps=1000).config)
    return DiffusionModel(unet, schedule, MelSettings(resolution=16), normalize, sample_clip=sample_clip)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_x0_is_clipped_to_the_data_range_of_an_unnormalized_model(scheduler_class):
    scheduler = scheduler_class.from_config(dict(DDPMScheduler().config), clip_sample=False)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    images, noise = torch.randn(4, 1, 8, 8), 3 * torch.randn(4, 1, 8, 8)  # implies an x0 far outside [0, 1]
    clipped = clip_to_data_range(noise, images, t, scheduler.alphas_cumprod, 0.0, 1.0)
    x0 = scheduler.step(clipped, t, images).pred_original_sample
    assert x0.min() >= -1e-4 and x0.max() <= 1 + 1e-4
    # diffusers' own clipping (what both modes got before) is symmetric: x0 may reach -1, which [0, 1] data never does.
    legacy = scheduler_class.from_config(dict(DDPMScheduler().config))
    legacy.set_timesteps(10)
    assert legacy.step(noise, t, images).pred_original_sample.min() < -0.99


def test_samplers_clip_the_way_the_model_says():
    schedule = dict(DDPMScheduler().config)
    assert make_scheduler(schedule, "ddim", 5, "data_range").config.clip_sample is False
    assert make_scheduler(schedule, "ddpm", 5, "legacy").config.clip_sample is True  # as saved
    assert tiny_model(False).data_range == (0.0, 1.0) and tiny_model(True).data_range == (-1.0, 1.0)


def test_a_model_saved_before_sample_clip_existed_loads_and_samples_as_it_did(tmp_path):
    model = tiny_model(normalize=False)
    model.save(tmp_path / "model")
    manifest_path = tmp_path / "model" / "audio.json"
    manifest = json.loads(manifest_path.read_text())
    for key in ("sample_clip", "training"):  # what an older version wrote had neither
        manifest.pop(key)
    manifest_path.write_text(json.dumps(manifest))
    old = DiffusionModel.load(tmp_path / "model")
    assert old.sample_clip == "legacy" and old.training is None
    sampled = sample_spectrograms(old, [0, 1], "ddpm", steps=3, seed=5)
    # The sampling loop of the version that saved it: the saved scheduler, its own clipping, nothing else.
    scheduler = DDPMScheduler.from_config(old.noise_schedule)
    scheduler.set_timesteps(3)
    generator = torch.Generator().manual_seed(5)
    images = torch.randn((2, 1, 16, 16), generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            noise = old.unet(images, t, class_labels=torch.tensor([0, 1])).sample
            images = scheduler.step(noise, t, images, generator=generator).prev_sample
    torch.testing.assert_close(sampled, images.clamp(0, 1)[:, 0])
    assert not torch.allclose(sample_spectrograms(old, [0, 1], "ddpm", 3, seed=5, clip="data_range"), sampled)


def test_griffin_lim_reseeds_no_other_random_stream(monkeypatch):
    """`torch.manual_seed` reseeds every CUDA device too: on a GPU that reset training's noise at each sample."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a global CUDA reseed")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", forbidden)
    monkeypatch.setattr(torch.cuda, "manual_seed", forbidden)
    transform = MelTransform(MelSettings(resolution=16))
    spectrograms = torch.rand(2, 16, 16)
    state = torch.random.get_rng_state()
    first = transform.audio(spectrograms, iterations=2, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's CPU stream untouched too
    assert (transform.audio(spectrograms, iterations=2, seed=3) == first).all()  # and its own seed repeats
    with seeded(7):
        drawn = torch.rand(3)
    with seeded(7):
        assert torch.equal(torch.rand(3), drawn)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_training_draws_and_weights_do_not_depend_on_sampling_during_training(tiny_config, tmp_path):
    from safetensors.torch import load_file

    from training.train import train

    results = []
    for sample_every, name in ((0, "plain"), (2, "sampling")):
        config = tiny_config(
            "train.max_steps=4", "train.log_every=1", "train.checkpoint_every=4", f"train.sample_every={sample_every}",
            "sample.steps=2", "sample.griffin_lim_iters=2", "train.sample_classes=[0]",
            output_dir=tmp_path / name,
        )  # fmt: skip
        results.append(train(config, show_progress=False))
    plain, sampling = results
    assert (sampling.output_dir / "samples" / "step_000002").is_dir()  # it did sample mid-run
    assert plain.losses == sampling.losses  # the same noise and timesteps at every step
    weights = [load_file(r.model_dir / "unet" / "diffusion_pytorch_model.safetensors") for r in results]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert sample_seed(config) != config.seed  # generation has its own seed
