"""Real clips through a model's representation and back: mel spectrogram -> vocoder -> audio.

    python -m evaluation.roundtrip --source ../shared/data/esc50-mini --frames 256 --mel-bins 64

Scored like generated clips, they are the **representation ceiling**: what a generator that produced
perfect spectrograms of unseen real clips would score after inversion. The gap between it and the real
ceiling is the vocoder's and the representation's (mel 64 -> Griffin-Lim 32 on esc50-mini costs about
a fifth of the scorer's top-1); the gap between it and the model's row is the model's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from core.audio import MelSettings, MelTransform, write_wav_atomic
from evaluation.clips import decoded_batches, fingerprint

DEFAULT_VOCODING = {"vocoder": "griffin_lim", "griffin_lim_iters": 32, "griffin_lim_momentum": 0.99, "vocoder_path": ""}

TABLE = "clips.csv"  # written last: a folder with it is complete


def vocoding_of(record: dict) -> dict:
    """The vocoder and its settings a generation record (or a model's `sampling`) names; earlier ones: Griffin-Lim."""
    return {key: record.get(key) if record.get(key) is not None else value for key, value in DEFAULT_VOCODING.items()}


def cached_round_trip(
    clips: pd.DataFrame,
    mel: MelSettings,
    vocoding: dict,
    cache_dir: str | os.PathLike,
    seed: int = 0,
    show_progress: bool = True,
) -> pd.DataFrame:
    """`round_trip_clips` under `cache_dir/representation/<key>`: made once per (clips, mel settings, vocoder),
    so every trial of a sweep scoring the same ceiling through the same representation shares it."""
    vocoding = vocoding_of(vocoding)
    extra = {k: v for k, v in vocoding.items() if k != "griffin_lim_iters" and v != DEFAULT_VOCODING[k]}
    # Earlier keys (Griffin-Lim with its default momentum) stay what they were.
    payload = [fingerprint(clips), mel.to_json(), vocoding["griffin_lim_iters"], seed] + ([extra] if extra else [])
    key = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "representation" / key
    if (folder / TABLE).is_file():
        table = pd.read_csv(folder / TABLE)
        return table.assign(source=[str(folder / name) for name in table["filename"]])
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder.parent))
    try:
        table = round_trip_clips(clips, mel, vocoding, staging, seed, show_progress)
        table.drop(columns="source").to_csv(staging / TABLE, index=False)
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished first: its copy is as good as ours
            if not (folder / TABLE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return table.assign(source=[str(folder / name) for name in table["filename"]])


def round_trip_clips(
    clips: pd.DataFrame,
    mel: MelSettings,
    vocoding: dict,
    folder: str | os.PathLike,
    seed: int = 0,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Write each clip of `clips` after mel -> vocoder into `folder`; the written clips as a clip table.

    Real clips enter as generation's training data did: decoded at the model's rate, at their own level.
    """
    from core.vocoders import build_vocoder

    vocoding = vocoding_of(vocoding)
    folder = Path(folder)
    transform = MelTransform(mel)
    vocoder = build_vocoder(
        vocoding["vocoder"], mel, iterations=vocoding["griffin_lim_iters"], momentum=vocoding["griffin_lim_momentum"],
        path=vocoding["vocoder_path"],
    )  # fmt: skip
    rows = []
    batches = decoded_batches(clips, mel.sample_rate, 32, mel.clip_seconds, "representation round trip", show_progress)
    index = 0
    for batch in batches:
        spectrograms = np.stack([transform.spectrogram(clip) for clip in batch])
        audio = vocoder(spectrograms, seed=seed)
        for clip in audio:
            row = clips.iloc[index]
            path = folder / f"{index:05d}_{Path(str(row['filename'])).stem}.wav"
            write_wav_atomic(path, clip, mel.sample_rate)
            rows.append({"filename": path.name, "target": int(row["target"]), "category": row["category"],
                         "source": str(path)})  # fmt: skip
            index += 1
    return pd.DataFrame(rows, columns=["filename", "target", "category", "source"])


# The round trip as a measurement: how much of a clip survives mel -> vocoder, before any model has a say.
STFT_FFT, STFT_HOP = 1024, 256  # the fixed STFT the distances are measured with, whatever the representation's


def _magnitudes(clips: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        spectrum = torch.stft(
            torch.from_numpy(np.ascontiguousarray(clips, dtype=np.float32)), STFT_FFT, STFT_HOP,
            window=torch.hann_window(STFT_FFT), return_complex=True,
        )  # fmt: skip
    return spectrum.abs().numpy()


def spectral_distances(original: np.ndarray, returned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per clip: spectral convergence ||S - S'|| / ||S|| and log-spectral distance (dB, the root mean square over
    frequency of the dB difference, averaged over frames), after the gain that best matches S' to S (least
    squares): a peak-level representation keeps no absolute loudness, and these measure shape, not level."""
    s, r = _magnitudes(original), _magnitudes(returned)
    gain = (s * r).sum(axis=(1, 2)) / np.maximum((r * r).sum(axis=(1, 2)), 1e-12)
    r = r * gain[:, None, None]
    convergence = np.linalg.norm((s - r).reshape(len(s), -1), axis=1) / np.maximum(
        np.linalg.norm(s.reshape(len(s), -1), axis=1), 1e-12
    )
    db = 10 * np.log10(np.maximum(s, 1e-5) ** 2) - 10 * np.log10(np.maximum(r, 1e-5) ** 2)
    log_spectral = np.sqrt((db**2).mean(axis=1)).mean(axis=1)
    return convergence, log_spectral


def measure_round_trip(
    source: str, mel: MelSettings, vocoding: dict, cache_dir: str | os.PathLike, show_progress: bool = True, **options
) -> dict[str, float]:
    """The real held-out clips of `source` (the evaluation's ceiling split, no generator) against themselves after
    the round trip: spectral convergence and log-spectral distance, and the offline scorer's top-1 and FD of
    both sets. `options`: `EvalOptions` fields (e.g. `bootstrap`, `scorer_epochs`)."""
    from evaluation.evaluate import build_evaluator
    from evaluation.scoring import EvalOptions

    peak = 0.0 if mel.level == "fixed" else -1.0  # matched: a fixed-level representation keeps loudness
    eval_options = EvalOptions.from_options({"trained_on": [], "peak": peak, **options})
    evaluator = build_evaluator(source, ["esc"], [], mel.sample_rate, cache_dir, show_progress, eval_options).prepare()
    real = evaluator.split.held_out
    returned = cached_round_trip(real, mel, vocoding, cache_dir, 0, show_progress)
    originals = np.concatenate(list(decoded_batches(real, mel.sample_rate, 32, mel.clip_seconds, show_progress=False)))
    back = np.concatenate(list(decoded_batches(returned, mel.sample_rate, 32, mel.clip_seconds, show_progress=False)))
    convergence, log_spectral = spectral_distances(originals, back)
    before = evaluator.score(real, desc="real").metrics
    after = evaluator.score(returned, desc="round trip").metrics
    return {
        "clips": len(real), "spectral_convergence": float(convergence.mean()),
        "log_spectral_distance_db": float(log_spectral.mean()),
        "esc_top1_real": before["esc_top1"], "esc_top1_round_trip": after["esc_top1"],
        "fd_esc_real": before["fd_esc"], "fd_esc_round_trip": after["fd_esc"],
    }  # fmt: skip


def describe(mel: MelSettings, vocoding: dict) -> str:
    bins, frames = mel.shape
    vocoder = vocoding_of(vocoding)
    inversion = (
        f"Griffin-Lim {vocoder['griffin_lim_iters']}, momentum {vocoder['griffin_lim_momentum']:g}"
        if vocoder["vocoder"] == "griffin_lim"
        else vocoder["vocoder"]
    )
    return (
        f"{bins}x{frames}, hop {mel.hop_length} ({1000 * mel.hop_length / mel.sample_rate:.0f} ms), n_fft "
        f"{mel.window_length}, level {mel.level}, {inversion}"
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    from core.config import DEFAULT_SOURCE, load_config, split_overrides
    from core.errors import exit_on_user_error
    from core.files import write_text_atomic
    from core.spectrograms import mel_settings

    parser = argparse.ArgumentParser(
        prog="python -m evaluation.roundtrip",
        description="How much of real clips survives a representation and its vocoder: spectral convergence, "
        "log-spectral distance and the offline scorer's top-1 and FD before and after the round trip.",
    )
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="ESC-50 folder (default esc50-mini)")
    parser.add_argument("--config", help="take the data.* and sample.* settings from this config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.frames=256 data.mel_bins=64")
    parser.add_argument("--cache-dir", default=".cache/evaluation")
    parser.add_argument("--bootstrap", type=int, default=0, help="bootstrap draws (0: no intervals, faster)")
    parser.add_argument("--json", default="", help="also write the result here")
    parser.add_argument("--no-progress", action="store_true")

    @exit_on_user_error
    def run(args) -> None:
        config = load_config(args.config, ["output_dir=unused", *split_overrides(args.overrides)])
        mel = mel_settings(config.data)
        vocoding = {key: getattr(config.sample, key) for key in DEFAULT_VOCODING}
        result = measure_round_trip(
            args.source, mel, vocoding, args.cache_dir, not args.no_progress, bootstrap=args.bootstrap
        )
        row = {"settings": describe(mel, vocoding), **result}
        print(
            f"{row['settings']}: SC {result['spectral_convergence']:.3f}, LSD {result['log_spectral_distance_db']:.2f} "
            f"dB, ESC top-1 {result['esc_top1_real']:.3f} -> {result['esc_top1_round_trip']:.3f}, FD "
            f"{result['fd_esc_real']:.1f} -> {result['fd_esc_round_trip']:.1f} ({result['clips']} clips)"
        )
        if args.json:
            import json as json_module

            write_text_atomic(args.json, json_module.dumps(row, indent=2))
            print(f"result: {args.json}")

    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
