"""The recipe's parts (core/diffusion): their maths, their validation, and each one trained and sampled end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.config import load_config
from core.diffusion.losses import LOSS_WEIGHTINGS, diffusion_loss
from core.diffusion.model import DiffusionModel
from core.diffusion.objectives import OBJECTIVES
from core.diffusion.samplers import SAMPLERS, make_scheduler, sample_spectrograms
from core.diffusion.schedules import noise_schedule
from core.errors import UserError
from tests.conftest import REPO, TINY_CONFIG

FIXTURE_MODEL = REPO / "tests" / "fixtures" / "model_v1"


def hand_alpha_bar(t: np.ndarray) -> np.ndarray:
    """DDPM's linear schedule, from its definition: betas 1e-4 .. 0.02 over 1000 steps, alpha-bar their product."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    return np.cumprod(1.0 - betas)[t]


def test_v_prediction_target_is_sqrt_alpha_bar_noise_minus_sqrt_one_minus_alpha_bar_x0():
    schedule = noise_schedule(1000, "linear", "v_prediction")
    t = torch.tensor([0, 250, 999])
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    a = torch.tensor(hand_alpha_bar(t.numpy()), dtype=torch.float32)[:, None, None, None]
    expected = a.sqrt() * noise - (1 - a).sqrt() * x0
    torch.testing.assert_close(OBJECTIVES["v_prediction"].target(schedule, x0, noise, t), expected)
    assert OBJECTIVES["epsilon"].target(schedule, x0, noise, t) is noise
    assert OBJECTIVES["sample"].target(schedule, x0, noise, t) is x0


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_maps_its_target_back_to_the_clean_spectrogram(name):
    schedule = noise_schedule(1000, "linear", name)
    t = torch.tensor([10, 500, 990])
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    x_t = schedule.add_noise(x0, noise, t)
    alpha_bar = schedule.alphas_cumprod[t][:, None, None, None]
    objective = OBJECTIVES[name]
    target = objective.target(schedule, x0, noise, t)
    torch.testing.assert_close(objective.to_x0(target, x_t, alpha_bar), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(objective.from_x0(x0, x_t, alpha_bar), target, atol=2e-3, rtol=1e-3)


def test_min_snr_weights_match_hand_computed_values():
    schedule = noise_schedule(1000, "linear", "epsilon")
    t = np.array([0, 100, 400, 999])
    snr = hand_alpha_bar(t) / (1 - hand_alpha_bar(t))
    assert snr[0] > 5 > snr[2]  # the clipping bites at the first timesteps only
    from diffusers.training_utils import compute_snr

    computed = compute_snr(schedule, torch.tensor(t))
    expected = {
        "epsilon": np.minimum(snr, 5) / snr,  # Hang et al. 2023, eq. for eps-prediction
        "v_prediction": np.minimum(snr, 5) / (snr + 1),
        "sample": np.minimum(snr, 5),
    }
    for name, weights in expected.items():
        got = LOSS_WEIGHTINGS["min_snr"](OBJECTIVES[name], computed, 5.0).numpy()
        np.testing.assert_allclose(got, weights, rtol=1e-3)  # float32 SNRs near 1e4 at t=0
    assert np.allclose(expected["epsilon"][2:], 1.0)  # noisy timesteps keep their full weight
    assert (LOSS_WEIGHTINGS["none"](OBJECTIVES["epsilon"], computed, 5.0) == 1).all()


class ZeroNet(torch.nn.Module):
    """Predicts 0 everywhere: the loss is then the target's own norm, which the test can recompute."""

    class Output:
        def __init__(self, sample):
            self.sample = sample

    def forward(self, x, t, class_labels=None):
        return self.Output(torch.zeros_like(x))


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_min_snr_weighs_each_sample_before_the_batch_mean(norm):
    schedule = noise_schedule(1000, "linear", "epsilon")
    images, labels = torch.rand(6, 1, 4, 4), torch.zeros(6, dtype=torch.long)
    torch.manual_seed(3)
    loss = diffusion_loss(
        ZeroNet(), schedule, images, labels, prediction="epsilon", loss=norm, weighting="min_snr", min_snr_gamma=2.0
    )
    torch.manual_seed(3)  # the same noise and timesteps, recomputed by hand
    noise = torch.randn_like(images)
    t = torch.randint(0, 1000, (6,))
    error = noise.abs() if norm == "l1" else noise.square()
    snr = torch.tensor(hand_alpha_bar(t.numpy()) / (1 - hand_alpha_bar(t.numpy())), dtype=torch.float32)
    expected = (error.flatten(1).mean(1) * snr.clamp(max=2.0) / snr).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    torch.manual_seed(3)
    plain = diffusion_loss(ZeroNet(), schedule, images, labels, prediction="epsilon", loss=norm)
    assert not torch.isclose(plain, loss)  # the weighting changed the loss


def test_zero_terminal_snr_ends_in_pure_noise_and_samplers_start_there():
    schedule = noise_schedule(1000, "squaredcos_cap_v2", "v_prediction", zero_terminal_snr=True)
    assert float(schedule.alphas_cumprod[-1]) == 0.0
    assert float(noise_schedule(1000, "squaredcos_cap_v2", "v_prediction").alphas_cumprod[-1]) > 0
    for name in ("ddim", "dpmpp_2m", "unipc", "euler"):
        assert int(make_scheduler(dict(schedule.config), name, 10, "data_range").timesteps[0]) == 999  # trailing


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.beta_schedule=cosine", "'train.beta_schedule': 'cosine' is not one of linear, scaled_linear"),
        ("train.prediction=x0", "'train.prediction': 'x0' is not one of epsilon, v_prediction, sample"),
        ("train.loss_weighting=snr", "'train.loss_weighting': 'snr' is not one of none, min_snr"),
        ("train.zero_terminal_snr=true", "'train.zero_terminal_snr': the last timestep is pure noise"),
        ("sample.scheduler=heun", "'sample.scheduler': 'heun' is not one of ddpm, ddim, dpmpp_2m, unipc, euler"),
        ("sample.guidance_scale=2", "'sample.guidance_scale': guidance needs a null class"),
        ("train.min_snr_gamma=0", "'train.min_snr_gamma': must be positive"),
    ],
)
def test_recipe_keys_are_validated_naming_the_key(override, named, tmp_path):
    with pytest.raises(UserError, match="invalid config key " + named.replace("(", r"\(")):
        load_config(TINY_CONFIG, [f"output_dir={tmp_path / 'run'}", override])


def test_a_typo_in_the_schedule_exits_2_before_the_output_folder_is_claimed(tmp_path, capsys):
    from training.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(TINY_CONFIG), f"output_dir={tmp_path / 'run'}", "train.beta_schedule=squaredcos"])
    assert exit_info.value.code == 2
    assert "train.beta_schedule" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_sampler_choices_of_every_command_line_come_from_the_registry():
    from evaluation.evaluate import parse_args as evaluate_args
    from training.generate import parse_args as generate_args

    for name in SAMPLERS:
        assert generate_args(["--model", "m", "--out", "o", "--scheduler", name]).scheduler == name
        assert evaluate_args(["--model", "m", "--scheduler", name]).scheduler == name
    with pytest.raises(SystemExit):
        generate_args(["--model", "m", "--out", "o", "--scheduler", "heun"])


def test_a_model_saved_by_the_previous_version_loads_and_samples_exactly_as_before():
    """tests/fixtures/model_v1: saved (with its samples) by the version before core/diffusion existed."""
    model = DiffusionModel.load(FIXTURE_MODEL)
    assert model.recipe is None and model.prediction == "epsilon" and model.sampling["scheduler"] == "ddim"
    expected = torch.load(FIXTURE_MODEL.parent / "model_v1_samples.pt")
    for key, spectrograms in expected.items():
        scheduler, scale = key.split("_")
        sampled = sample_spectrograms(model, [0, 7, 49], scheduler, steps=4, guidance_scale=float(scale), seed=3)
        # Equal up to float rounding: CPU kernels differ between machines (up to 5e-6 seen on an AMD EPYC against
        # the machine that saved them); any change of behaviour (clipping, schedule, seeding) moves them by far more.
        torch.testing.assert_close(sampled, spectrograms, rtol=0, atol=1e-4, msg=key)


def test_loading_refuses_a_unet_whose_size_is_not_what_the_mel_settings_make(tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(FIXTURE_MODEL, folder)
    manifest = json.loads((folder / "audio.json").read_text())
    manifest["mel"]["resolution"] = 32
    (folder / "audio.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="the UNet takes 16x16 spectrograms but its mel settings .* make 32x32"):
        DiffusionModel.load(folder)


RECIPES = {
    "epsilon, min-SNR, L1": ["train.prediction=epsilon", "train.loss_weighting=min_snr", "train.loss=l1"],
    "v, min-SNR, cosine, zero terminal SNR": [
        "train.prediction=v_prediction", "train.loss_weighting=min_snr", "train.beta_schedule=squaredcos_cap_v2",
        "train.zero_terminal_snr=true",
    ],
    "x0, scaled linear": ["train.prediction=sample", "train.beta_schedule=scaled_linear"],
}  # fmt: skip


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_each_recipe_trains_is_recorded_and_samples_with_every_sampler_and_guidance(recipe, tiny_config):
    import mlflow

    from training.train import train

    overrides = RECIPES[recipe]
    config = tiny_config(
        *overrides, "train.max_steps=2", "train.checkpoint_every=2", "train.warmup_steps=0", "model.class_dropout=0.2",
        "data.resolution=16", "model.block_channels=[8,16]", "train.sample_classes=[0]", "sample.steps=3",
        "sample.scheduler=dpmpp_2m", "sample.griffin_lim_iters=2",
    )  # fmt: skip
    result = train(config, show_progress=False)
    manifest = json.loads((result.model_dir / "audio.json").read_text())
    expected = dict(item.removeprefix("train.").split("=") for item in overrides)
    recorded = {key: str(manifest["recipe"][key]).lower() for key in expected}
    assert recorded == expected
    sampling = {"scheduler": "dpmpp_2m", "steps": 3, "guidance_scale": 1.0, "griffin_lim_iters": 2}
    assert {key: manifest["sampling"][key] for key in sampling} == sampling
    params = mlflow.tracking.MlflowClient(config.tracking.tracking_uri).get_run(result.run_id).data.params
    assert {key: params[f"train.{key}"].lower() for key in expected} == expected

    model = DiffusionModel.load(result.model_dir)
    assert model.prediction == config.train.prediction
    assert bool(model.noise_schedule["rescale_betas_zero_snr"]) == config.train.zero_terminal_snr
    for name in SAMPLERS:
        for scale in (1.0, 2.0):
            sampled = sample_spectrograms(model, [0, 3], name, steps=3, guidance_scale=scale, seed=1)
            assert sampled.shape == (2, 16, 16), name
            assert torch.isfinite(sampled).all() and sampled.min() >= 0 and sampled.max() <= 1, (name, scale)
