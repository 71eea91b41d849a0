"""On a CUDA machine: stages 2 and 3 for the 64x64 experiment model (~20M parameters, batch 64).

fp32 vs bf16 autocast vs bf16 + channels_last (+ torch.compile): training samples/s and sampling
(UNet denoising steps) samples/s, peak GPU memory, and model FLOPs utilisation (FLOPs counted by
torch's FlopCounterMode on one step, over the GPU's dense peak for that precision).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# Dense peak TFLOP/s (no sparsity) by GPU name fragment: (fp32 without TF32, bf16 tensor cores).
PEAK_TFLOPS = {
    "H200": (67.0, 989.0),
    "H100 SXM": (67.0, 989.0),
    "H100 PCIe": (51.0, 756.0),
    "H100": (67.0, 989.0),
    "A100": (19.5, 312.0),
    "L4": (30.3, 121.0),
    "A10G": (31.2, 70.0),
}
PEAK_ENV = "BENCH_PEAK_TFLOPS"  # "fp32,bf16" overrides the table


def peak_tflops(name: str) -> tuple[float, float] | None:
    if os.environ.get(PEAK_ENV):
        fp32, bf16 = (float(x) for x in os.environ[PEAK_ENV].split(","))
        return fp32, bf16
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in name:
            return peaks
    return None


EXPERIMENT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "esc50_64.yaml"


def _model(channels_last: bool, device: str, config_path: str | os.PathLike = EXPERIMENT_CONFIG,
           overrides: tuple[str, ...] = ()):  # fmt: skip
    import torch

    from core.config import load_config
    from core.diffusion.network import build_unet
    from core.spectrograms import mel_settings

    config = load_config(config_path, ["output_dir=unused", *overrides])
    unet = build_unet(config.model, mel_settings(config.data).shape).to(device)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    return unet, config


def measure(mode: str, batch: int, steps: int, compile_model: bool = False, device: str = "cuda",
            config_path: str | os.PathLike = EXPERIMENT_CONFIG, overrides: tuple[str, ...] = ()) -> dict:  # fmt: skip
    """Training and sampling throughput of the experiment UNet in `mode` (fp32 | bf16 | bf16+channels_last).

    `device="cpu"` runs the same code without the GPU's memory figures: what the tests exercise.
    `config_path`/`overrides`: another config's UNet (its mel shape too) instead of the experiment's.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from core.spectrograms import mel_settings

    on_gpu = device.startswith("cuda")
    channels_last = mode.endswith("channels_last")
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float32
    unet, config = _model(channels_last, device, config_path, overrides)
    forward = torch.compile(unet) if compile_model else unet
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    shape = mel_settings(config.data).shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(batch, 1, *shape, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, unet.config.num_class_embeds or 1, (batch,), device=device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)
    synchronize = torch.cuda.synchronize if on_gpu else lambda: None

    def train_step():
        with torch.autocast(unet.device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.mse_loss(forward(images, timesteps, class_labels=labels).sample.float(), images.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def sample_step():
        with torch.autocast(unet.device.type, dtype=dtype, enabled=dtype != torch.float32):
            forward(images, timesteps, class_labels=labels)

    results = {"mode": mode + ("+compile" if compile_model else ""), "batch": batch}
    parameters = sum(p.numel() for p in unet.parameters())
    results["parameters_m"] = parameters / 1e6
    for name, step in (("train", train_step), ("sample", sample_step)):
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        for _ in range(3):  # warm-up (and compilation)
            step()
        synchronize()
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize()
        seconds = time.perf_counter() - started
        achieved = flops * steps / seconds
        peaks = peak_tflops(torch.cuda.get_device_name(0)) if on_gpu else None
        peak = (peaks[1] if dtype == torch.bfloat16 else peaks[0]) * 1e12 if peaks else None
        results[name] = {
            "samples_per_s": batch * steps / seconds,
            "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
            "tflops_per_s": achieved / 1e12,
            "mfu": achieved / peak if peak else None,
        }
    return results


def run(quick: bool = False) -> dict:
    """Every mode, each in a fresh process so that peak memory and compiled graphs are its own."""
    import torch

    from bench.common import in_child

    batch, steps = (8, 3) if quick else (64, 20)
    modes = [("fp32", False), ("bf16", False), ("bf16+channels_last", False), ("bf16+channels_last", True)]
    if quick:
        modes = modes[:3]
    report = {"gpu": torch.cuda.get_device_name(0), "modes": []}
    for mode, compile_model in modes:
        try:
            report["modes"].append(in_child(measure, mode, batch, steps, compile_model))
        except Exception as error:  # torch.compile can lack a compiler on the box: say so, keep the rest
            report["modes"].append({"mode": mode + ("+compile" if compile_model else ""), "error": str(error)[:300]})
    print(format_gpu_table(report))
    return report


def format_gpu_table(report: dict) -> str:
    header = f"{'mode':<26} {'train/s':>9} {'MFU':>6} {'mem MiB':>8} {'sample/s':>9} {'MFU':>6}"
    lines = [f"GPU: {report['gpu']}", header]
    for row in report["modes"]:
        if "error" in row:
            lines.append(f"{row['mode']:<26} failed: {row['error'][:80]}")
            continue
        train, sample = row["train"], row["sample"]
        lines.append(
            f"{row['mode']:<26} {train['samples_per_s']:>9.1f} {_pct(train['mfu']):>6} "
            f"{_mib(train['peak_memory_mib']):>8} {sample['samples_per_s']:>9.1f} {_pct(sample['mfu']):>6}"
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "n/a"


def _mib(value: float | None) -> str:
    return f"{value:.0f}" if value is not None else "n/a"
