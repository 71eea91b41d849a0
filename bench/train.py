"""Stage 2: training throughput, ours (`training.train.train`) vs a bare PyTorch loop on in-memory tensors.

Ours is the whole loop: the spectrogram cache streamed through `datasets`, Accelerate, gradient
clipping, the LR schedule, EMA and MLflow logging (SQLite store in the work folder). Its speed is
read from the timestamps MLflow gives the logged losses: from the first logged step to the last,
so set-up (model build, MLflow run creation) and the end (saving, sample clips) are outside, as the
baseline's set-up is. The baseline trains the same UNet (same config, same optimizer settings) on
random batches indexed from tensors already in memory: noise, predict, loss, step, nothing else.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import BenchOptions, StageResult, Stopwatch, cuda_available, in_child, log, median_result

TINY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


def bench_config(
    source: str, work_dir: str, resolution: int, steps: int, log_every: int, extra: list[str] | None = None,
    tracking_uri: str | None = None,
):  # fmt: skip
    """configs/tiny.yaml at `resolution` with `extra` overrides, writing into a fresh folder under `work_dir`."""
    from core.config import load_config

    run_dir = Path(tempfile.mkdtemp(dir=work_dir, prefix="train-"))
    tracking_uri = tracking_uri or f"sqlite:///{run_dir / 'mlflow.db'}"
    overrides = [
        f"output_dir={run_dir / 'run'}",
        f"data.source={source}",
        f"data.cache_dir={Path(work_dir) / 'spectrogram-cache'}",
        f"data.resolution={resolution}",
        f"tracking.tracking_uri={tracking_uri}",
        f"train.max_steps={steps}",
        f"train.log_every={log_every}",
        f"train.checkpoint_every={steps}",  # saved at the very end, outside the measured window
        "train.sample_classes=[0]",
        "sample.steps=4",  # the end-of-run sample clip is outside the window too: keep it short
        "sample.griffin_lim_iters=4",
        *(extra or []),
    ]
    return load_config(TINY_CONFIG, overrides)


def peak_memory_mib() -> float:
    import torch

    from bench.common import peak_rss_mib

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mib()


def ours(source: str, work_dir: str, resolution: int, steps: int, log_every: int) -> dict:
    import mlflow

    from training.train import train

    config = bench_config(source, work_dir, resolution, steps, log_every)
    result = train(config, show_progress=False)
    history = mlflow.tracking.MlflowClient(config.tracking.tracking_uri).get_metric_history(result.run_id, "train/loss")
    points = sorted((m.step, m.timestamp) for m in history)
    (first_step, first_ms), (last_step, last_ms) = points[0], points[-1]
    samples = (last_step - first_step) * config.train.batch_size
    return {"samples_per_s": samples / ((last_ms - first_ms) / 1000), "peak_memory_mib": peak_memory_mib()}


def baseline(source: str, work_dir: str, resolution: int, steps: int, warmup: int) -> dict:
    """The same UNet, optimizer and noise schedule in a bare loop over tensors in memory."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from core.diffusion.network import build_unet
    from core.spectrograms import build_spectrogram_cache

    config = bench_config(source, work_dir, resolution, steps, steps)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = build_spectrogram_cache(config.data, show_progress=False).with_format("numpy")
    images = (torch.from_numpy(np.asarray(table["spectrogram"]))[:, None] * 2 - 1).to(device)
    labels = torch.from_numpy(np.asarray(table["target"])).to(device)
    torch.manual_seed(config.seed)
    unet = build_unet(config.model, config.data.resolution).to(device).train()
    train_cfg = config.train
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay,
        betas=(train_cfg.adam_beta1, train_cfg.adam_beta2),
    )  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=train_cfg.num_train_timesteps, beta_schedule=train_cfg.beta_schedule)
    batch = train_cfg.batch_size
    watch = Stopwatch()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            watch.__enter__()
        index = torch.randint(0, len(images), (batch,), device=device)
        clean, classes = images[index], labels[index]
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, train_cfg.num_train_timesteps, (batch,), device=device)
        prediction = unet(scheduler.add_noise(clean, noise, timesteps), timesteps, class_labels=classes).sample
        F.mse_loss(prediction, noise).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    watch.__exit__()
    return {"samples_per_s": steps * batch / watch.seconds, "peak_memory_mib": peak_memory_mib()}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run(options: BenchOptions) -> list[StageResult]:
    from core.config import DataConfig
    from core.spectrograms import build_spectrogram_cache

    log_every = 5
    measured = 5 if options.quick else 40
    resolution = 32 if options.quick else 64
    work = str(options.work_dir)
    # Both read the same cache, built once here, outside any measurement.
    cache_dir = options.work_dir / "spectrogram-cache"
    build_spectrogram_cache(
        DataConfig(source=options.source, resolution=resolution, cache_dir=str(cache_dir)),
        show_progress=False,
    )
    ours_runs, base_runs, ours_mem, base_mem = [], [], [], []
    for repeat in range(options.repeats):
        mine = in_child(ours, options.source, work, resolution, log_every + measured, log_every)
        theirs = in_child(baseline, options.source, work, resolution, measured, log_every)
        ours_runs.append(mine["samples_per_s"])
        base_runs.append(theirs["samples_per_s"])
        ours_mem.append(mine["peak_memory_mib"])
        base_mem.append(theirs["peak_memory_mib"])
        log(f"  train {repeat + 1}/{options.repeats}: ours {ours_runs[-1]:.1f}, baseline {base_runs[-1]:.1f} samples/s")
    return [
        median_result(
            "train",
            "samples/s",
            "bare PyTorch loop, tensors in memory",
            ours_runs,
            base_runs,
            peak_memory_mib_ours=max(ours_mem),
            peak_memory_mib_baseline=max(base_mem),
            peak_memory_kind="torch.cuda.max_memory_allocated" if cuda_available() else "peak RSS of the process",
            resolution=resolution,
            batch_size=16,
            measured_steps=measured,
        )  # fmt: skip
    ]
