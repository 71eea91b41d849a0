"""Stage 4: FAD (PANN) of a generated folder, ours (`evaluation.evaluate.score_generated`) vs the package's `score()`.

Both sides read the same audio files: ours through the generated folder's manifest and the ESC-50
reference split, the package through flat folders of symlinks to exactly those files (its `score()`
lists one folder, no sub-folders). Clips are written at PANN's 16 kHz so that neither side resamples:
the two distances can then be compared exactly (the package would resample with resampy, ours with
soxr). PANN's weights are random (nothing downloads here), the same file for both sides.

The package's `score()` with PANN concatenates the per-clip (2048,) embeddings into one 1-D array, so
its number is the distance between two scalar distributions. The equality is therefore checked against
the package's own statistics and distance applied to the embeddings `score()` saved, one row per clip.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import BenchOptions, StageResult, Stopwatch, in_child, log, median_result
from core.audio import decode_audio

PANN_RATE = 16000
PANN_FILE = "Cnn14_16k_mAP%3D0.438.pth"
EMBEDDING_SIZE = 2048
TOLERANCE = 1e-4


def write_random_pann(ckpt_dir: Path, calibration_clips: np.ndarray) -> Path:
    """Seeded random Cnn14_16k weights in the file name and layout the package loads.

    Random convolutions with untouched batch-norm statistics map every clip to nearly the same
    embedding, so any two sets are a tiny distance apart and float32 rounding alone moves it by 1e-4.
    The batch norms are therefore calibrated on real clips, as training would have set them.
    """
    import torch
    from frechet_audio_distance.models.pann import Cnn14_16k

    torch.manual_seed(0)
    model = Cnn14_16k(
        sample_rate=PANN_RATE, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527
    ).eval()  # no dropout while calibrating
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over every calibration batch
        norm.train()
    with torch.no_grad():
        for start in range(0, len(calibration_clips), 16):
            model(torch.from_numpy(calibration_clips[start : start + 16]), None)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.eval().state_dict()}, ckpt_dir / PANN_FILE)
    return ckpt_dir


def prepare_folders(source: str, root: Path, classes: int, generated_clips: int) -> dict[str, str]:
    """16 kHz copies: an ESC-50 reference folder (2 clips of each of the first `classes` classes; ours
    holds one of each out), a generated folder (manifest + <category>/<n>.wav) of every clip of those
    classes, repeated up to `generated_clips`, and the package's two flat folders linking to the very
    same files. The generated set holds clips the reference does not: copies of the reference alone
    would put the distance near 0, where relative differences say nothing."""
    from core.audio import write_wav_atomic
    from core.esc50 import read_clips
    from evaluation.protocol import split_reference

    clips = read_clips(source)
    clips = clips[clips["target"] < classes].sort_values(["target", "filename"]).reset_index(drop=True)
    in_reference = clips.index.isin(clips.groupby("target").head(2).index)
    reference_dir = root / "reference"
    wav_paths = []
    for row, referenced in zip(clips.itertuples(), in_reference):
        folder = reference_dir / "audio" if referenced else root / "other-clips"
        wav_paths.append(folder / Path(row.filename).with_suffix(".wav"))
        write_wav_atomic(wav_paths[-1], decode_audio(row.path, PANN_RATE, 5.0, name=row.filename), PANN_RATE)
    (reference_dir / "meta").mkdir(exist_ok=True)
    table = clips[in_reference][["filename", "fold", "target", "category"]].copy()
    table["filename"] = [str(Path(name).with_suffix(".wav")) for name in table["filename"]]
    table.to_csv(reference_dir / "meta" / "esc50.csv", index=False)

    generated_dir = root / "generated"
    rows = []
    for index in range(generated_clips):  # esc50-mini repeated as often as needed
        row = clips.iloc[index % len(clips)]
        relative = f"{row['category']}/{index}.wav"
        os.makedirs(generated_dir / row["category"], exist_ok=True)
        os.link(wav_paths[index % len(clips)], generated_dir / relative)
        rows.append({"file": relative, "target": row["target"], "category": row["category"]})
    pd.DataFrame(rows).to_csv(generated_dir / "manifest.csv", index=False)

    flat = {"background": root / "flat-reference", "eval": root / "flat-generated"}
    for folder in flat.values():
        folder.mkdir()
    for path in split_reference(str(reference_dir), trained_on=[]).reference["source"]:  # ours' reference set
        os.symlink(path, flat["background"] / Path(path).name)
    for row in rows:
        os.symlink(generated_dir / row["file"], flat["eval"] / row["file"].replace("/", "-"))
    return {"reference": str(reference_dir), "generated": str(generated_dir), **{k: str(v) for k, v in flat.items()}}


def ours(folders: dict, ckpt_dir: str, cache_dir: str) -> dict:
    import frechet_audio_distance  # noqa: F401  imported before the clock, as the baseline's is (about 4 s)

    from evaluation.evaluate import score_generated

    with Stopwatch() as watch:
        metrics = score_generated(
            folders["generated"], folders["reference"], ["fad"], cache_dir=cache_dir, show_progress=False,
            fad_model="pann", fad_sample_rate=PANN_RATE, ckpt_dir=ckpt_dir,
            # The package's own treatment, to compare like with like: clips as decoded at PANN's rate, no
            # intervals (the protocol's peak normalization and bootstrap are measured apart, not here).
            sample_rate=PANN_RATE, peak=0, bootstrap=0, trained_on=[],
        )  # fmt: skip
    return {"seconds": watch.seconds, "fad": metrics["fad_pann"]}


def baseline(folders: dict, ckpt_dir: str, embeddings_dir: str) -> dict:
    import torch
    from frechet_audio_distance import FrechetAudioDistance

    previous_hub_dir = torch.hub.get_dir()
    paths = {name: os.path.join(embeddings_dir, f"{name}.npy") for name in ("background", "eval")}
    with Stopwatch() as watch:
        fad = FrechetAudioDistance(ckpt_dir=ckpt_dir, model_name="pann", sample_rate=PANN_RATE, verbose=False)
        with contextlib.redirect_stdout(io.StringIO()) as printed:  # it reports errors by printing them
            score = fad.score(
                folders["background"], folders["eval"],
                background_embds_path=paths["background"], eval_embds_path=paths["eval"],
            )  # fmt: skip
    torch.hub.set_dir(previous_hub_dir)
    # The package's statistics and distance over its own embeddings, one row per clip.
    statistics = [fad.calculate_embd_statistics(np.load(p).reshape(-1, EMBEDDING_SIZE)) for p in paths.values()]
    rows_fad = float(fad.calculate_frechet_distance(*statistics[0], *statistics[1]))
    message = " ".join(printed.getvalue().split())[:300]
    return {"seconds": watch.seconds, "score": float(score), "fad_rows": rows_fad, "score_message": message}


def run(options: BenchOptions) -> list[StageResult]:
    root = options.work_dir / "evaluate"
    root.mkdir(parents=True, exist_ok=True)
    # The study scores 50 classes x 40 generated clips: 2,000, esc50-mini's clips repeated to make them up.
    classes, generated_clips = (8, 4) if options.quick else (50, 2000)
    folders = prepare_folders(options.source, root, classes, generated_clips)
    reference_clips = np.stack(
        [decode_audio(path, PANN_RATE, 5.0) for path in sorted(Path(folders["background"]).iterdir())]
    )
    ckpt_dir = str(write_random_pann(root / "ckpt", reference_clips))
    clips = generated_clips + len(os.listdir(folders["background"]))
    ours_runs, base_runs = [], []
    for repeat in range(options.repeats):
        mine = in_child(ours, folders, ckpt_dir, str(root / f"cache-{repeat}"))  # fresh cache: reference embedded too
        embeddings_dir = root / f"package-embeddings-{repeat}"
        embeddings_dir.mkdir()
        theirs = in_child(baseline, folders, ckpt_dir, str(embeddings_dir))
        ours_runs.append(clips / mine["seconds"])
        base_runs.append(clips / theirs["seconds"])
        log(
            f"  evaluate {repeat + 1}/{options.repeats}: ours {ours_runs[-1]:.2f}, baseline {base_runs[-1]:.2f} "
            f"clips/s; FAD ours {mine['fad']:.6g}, package {theirs['fad_rows']:.6g} (score(): {theirs['score']:.6g})"
        )
    ours_fad, package_fad, package_score = mine["fad"], theirs["fad_rows"], theirs["score"]  # the last repeat
    message = theirs["score_message"]
    relative = abs(ours_fad - package_fad) / max(abs(package_fad), 1e-12)
    return [
        median_result(
            "evaluate",
            "clips/s",
            "frechet_audio_distance.FrechetAudioDistance(pann).score()",
            ours_runs,
            base_runs,
            clips_embedded=clips,
            generated_clips=generated_clips,
            fad_ours=ours_fad,
            fad_package_rows=package_fad,
            fad_package_score=package_score,
            package_score_printed=message,
            fad_relative_difference=relative,
            fad_equal=relative <= TOLERANCE,
        )  # fmt: skip
    ]
