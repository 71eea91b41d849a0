"""Stage 1: audio files -> log-mel spectrograms, ours (parallel, cached) vs teticio's `audiodiffusion.mel.Mel`.

Both read the same files at the same sample rate, hop, window and resolution. The baseline is charged
only for computing (its images are kept in memory, never written); ours also writes and reloads the
on-disk cache. The second epoch is ours reading that cache back as training streams it.
"""

from __future__ import annotations

import tempfile

from bench.common import BenchOptions, StageResult, Stopwatch, in_child, log, median_result, scaled_source

TRAIN_BATCH = 16  # configs/tiny.yaml's batch size


def ours_epochs(source: str, resolution: int, cache_root: str) -> dict:
    """Epoch 1: build the cache from the audio files. Epoch 2: open the cache and stream it in training's batches."""
    from core.audio import MelTransform, decode_audio
    from core.config import DataConfig
    from core.esc50 import read_clips
    from core.spectrograms import SpectrogramBatches, build_spectrogram_cache, mel_settings

    data = DataConfig(source=source, resolution=resolution, cache_dir=tempfile.mkdtemp(dir=cache_root))
    # Libraries loaded (librosa's lazy modules, its numba kernels) before the clock starts, as for the baseline.
    first_clip = read_clips(source)["path"][0]
    MelTransform(mel_settings(data)).spectrogram(decode_audio(first_clip, data.sample_rate, data.clip_seconds))
    with Stopwatch() as first:
        table = build_spectrogram_cache(data, show_progress=False)
    clips = len(table)
    # Epoch 1 of training streams what it computed: the stream's own one-off start-up (datasets'
    # torch formatter, Arrow extension types) is paid there, as the baseline's librosa warm-up is above.
    sum(len(batch["target"]) for batch in SpectrogramBatches(table, TRAIN_BATCH, data.shuffle_buffer, seed=0))
    with Stopwatch() as second:
        table = build_spectrogram_cache(data, show_progress=False)
        batches = SpectrogramBatches(table, TRAIN_BATCH, data.shuffle_buffer, seed=1)
        streamed = sum(len(batch["target"]) for batch in batches)
    assert streamed == clips - clips % TRAIN_BATCH, (streamed, clips)
    return {"clips": clips, "compute_s": first.seconds, "cached_s": second.seconds}


def baseline_epoch(source: str, resolution: int) -> dict:
    """teticio's preprocessing: `Mel.load_audio` then `audio_slice_to_image`, one file after another."""
    import numpy as np
    from audiodiffusion.mel import Mel

    from core.config import DataConfig
    from core.esc50 import read_clips
    from core.spectrograms import mel_settings

    settings = mel_settings(DataConfig(source=source, resolution=resolution))
    mel = Mel(
        x_res=resolution, y_res=resolution, sample_rate=settings.sample_rate, n_fft=settings.window_length,
        hop_length=settings.hop_length, top_db=int(settings.top_db),
    )  # fmt: skip
    paths = list(read_clips(source)["path"])
    mel.load_audio(audio_file=paths[0])  # librosa's lazy modules loaded before the clock starts, as for ours
    mel.audio_slice_to_image(0)
    images = []
    with Stopwatch() as watch:
        for path in paths:
            mel.load_audio(audio_file=path)
            images.append(np.asarray(mel.audio_slice_to_image(0)))
    assert images[0].shape == (resolution, resolution), images[0].shape
    return {"clips": len(paths), "compute_s": watch.seconds}


def run(options: BenchOptions) -> list[StageResult]:
    # esc50-mini x10 = as many files as the full ESC-50 (2,000); quick keeps one clip per class (50).
    copies, per_class = (1, 1) if options.quick else (10, 0)
    resolution = 64
    results = []
    # esc50-mini is FLAC, whose decoding dominates; the full ESC-50 is WAV, so both are measured.
    for audio_format in ("flac", "wav"):
        source = scaled_source(
            options.source, copies, options.work_dir / f"preprocess-source-{audio_format}",
            as_wav=audio_format == "wav", per_class=per_class,
        )  # fmt: skip
        ours, cached, base = [], [], []
        for repeat in range(options.repeats):
            run_ours = in_child(ours_epochs, source, resolution, str(options.work_dir))
            run_base = in_child(baseline_epoch, source, resolution)
            ours.append(run_ours["clips"] / run_ours["compute_s"])
            cached.append(run_ours["clips"] / run_ours["cached_s"])
            base.append(run_base["clips"] / run_base["compute_s"])
            log(f"  preprocess ({audio_format}) {repeat + 1}/{options.repeats}: ours {ours[-1]:.1f}, "
                f"cached {cached[-1]:.0f}, baseline {base[-1]:.1f} clips/s")  # fmt: skip
        common = {"clips": run_base["clips"], "resolution": resolution, "source_copies": copies, "format": audio_format}
        name = "preprocess" if audio_format == "flac" else f"preprocess_{audio_format}"
        compute = median_result(name, "clips/s", "audiodiffusion.mel.Mel, file by file", ours, base, **common)
        results.append(compute)
        if audio_format == "flac":  # the cache holds spectrograms: reading it back does not depend on the format
            results.append(median_result(
                "preprocess_cached", "clips/s", "audiodiffusion.mel.Mel computing again", cached, base,
                vs_our_compute=compute.ours, **common,
            ))  # fmt: skip
    return results
