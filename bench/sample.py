"""Stage 3: clips/s for DDIM (50 steps) including spectrogram-to-audio, ours vs diffusers' AudioDiffusionPipeline.

That pipeline passes no class labels, so both sides run one unconditional UNet of our tiny config's
size, with the same weights (saved once, loaded by each side), the same noise schedule and
Mel-equivalent settings (resolution, sample rate, hop, window, top_db, 32 Griffin-Lim iterations).
Ours: `core.diffusion.samplers.sample_spectrograms` then `MelTransform.audio`, both over the whole batch.
Theirs: the pipeline's batched UNet loop, then its `Mel.image_to_audio` (librosa) clip by clip.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import BenchOptions, StageResult, Stopwatch, in_child, log, median_result

STEPS = 50
GRIFFIN_LIM_ITERS = 32
TRAIN_TIMESTEPS = 1000


def save_unconditional_unet(folder: Path, resolution: int) -> Path:
    """Our tiny config's UNet without the class embedding, randomly initialised (seeded), saved once."""
    import torch
    from diffusers import UNet2DModel

    from bench.train import TINY_CONFIG
    from core.config import load_config
    from core.diffusion.network import build_unet

    torch.manual_seed(0)
    config = load_config(TINY_CONFIG, [f"output_dir={folder}", f"data.resolution={resolution}"])
    conditional = build_unet(config.model, resolution)
    unet = UNet2DModel.from_config({**conditional.config, "num_class_embeds": None})
    unet.save_pretrained(folder)
    return folder


def _noise_schedule() -> dict:
    from diffusers import DDPMScheduler

    return dict(DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear").config)


def ours(unet_dir: str, clips: int, steps: int = STEPS) -> dict:
    import torch
    from diffusers import UNet2DModel

    from core.audio import MelSettings, MelTransform
    from core.diffusion.model import DiffusionModel
    from core.diffusion.samplers import sample_spectrograms

    device = "cuda" if torch.cuda.is_available() else "cpu"
    unet = UNet2DModel.from_pretrained(unet_dir).to(device).eval()
    mel = MelSettings(resolution=unet.config.sample_size)
    model = DiffusionModel(unet=unet, noise_schedule=_noise_schedule(), mel=mel, normalize=True)
    transform = MelTransform(mel)

    def generate(count: int, steps: int, iterations: int):
        spectrograms = sample_spectrograms(model, [0] * count, "ddim", steps, batch_size=count, seed=0)
        return transform.audio(spectrograms.to(device), iterations=iterations, seed=0)

    generate(1, 1, 1)  # warm-up outside the clock (lazy imports, kernel selection), as for the baseline
    with Stopwatch() as watch:
        audio = generate(clips, steps, GRIFFIN_LIM_ITERS)
    assert audio.shape == (clips, mel.clip_samples), audio.shape
    return {"clips_per_s": clips / watch.seconds}


def baseline(unet_dir: str, clips: int, steps: int = STEPS) -> dict:
    import torch
    from diffusers import AudioDiffusionPipeline, DDIMScheduler, Mel, UNet2DModel

    from core.audio import MelSettings

    device = "cuda" if torch.cuda.is_available() else "cpu"
    unet = UNet2DModel.from_pretrained(unet_dir).to(device).eval()
    settings = MelSettings(resolution=unet.config.sample_size)
    mel = Mel(
        x_res=settings.resolution, y_res=settings.resolution, sample_rate=settings.sample_rate,
        n_fft=settings.window_length, hop_length=settings.hop_length, top_db=int(settings.top_db),
        n_iter=GRIFFIN_LIM_ITERS,
    )  # fmt: skip
    pipe = AudioDiffusionPipeline(
        vqvae=None, unet=unet, mel=mel, scheduler=DDIMScheduler.from_config(_noise_schedule())
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=1, steps=1, generator=torch.Generator(device).manual_seed(0))  # warm-up, as for ours
    with Stopwatch() as watch:
        output = pipe(batch_size=clips, steps=steps, generator=torch.Generator(device).manual_seed(0))
    assert len(output.audios) == clips, output.audios.shape
    return {"clips_per_s": clips / watch.seconds}


def run(options: BenchOptions) -> list[StageResult]:
    # --quick proves the stage runs (10 steps, 2 clips); the recorded numbers use 50 steps, 16 clips.
    resolution, clips, steps = (32, 2, 10) if options.quick else (64, 16, STEPS)
    unet_dir = str(save_unconditional_unet(options.work_dir / f"unconditional-unet-{resolution}", resolution))
    ours_runs, base_runs = [], []
    for repeat in range(options.repeats):
        ours_runs.append(in_child(ours, unet_dir, clips, steps)["clips_per_s"])
        base_runs.append(in_child(baseline, unet_dir, clips, steps)["clips_per_s"])
        log(f"  sample {repeat + 1}/{options.repeats}: ours {ours_runs[-1]:.2f}, baseline {base_runs[-1]:.2f} clips/s")
    return [
        median_result(
            "sample",
            "clips/s",
            "diffusers AudioDiffusionPipeline (+ its librosa Mel)",
            ours_runs,
            base_runs,
            resolution=resolution,
            clips_per_batch=clips,
            ddim_steps=steps,
            griffin_lim_iters=GRIFFIN_LIM_ITERS,
        )  # fmt: skip
    ]
