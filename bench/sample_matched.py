"""Sampling at equal quality: DPM-Solver++(2M) at 10-25 steps against DDIM at 50, on one trained tiny model.

For each setting, clips/s (the whole of `core.generation.generate`: sampling, Griffin-Lim, writing the
clips) and the offline scorer's `fd_esc` with the 95% bootstrap interval the evaluation gives, under its
protocol (a reference of real clips the model never heard). The row `sample_matched`: the fewest
dpmpp_2m steps whose FD interval overlaps DDIM-50's, and its speed against DDIM-50's (ours / baseline).
Overlapping intervals say "not distinguishable at this clip count", not "equal".
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import BenchOptions, StageResult, Stopwatch, log

BASELINE = ("ddim", 50)
CANDIDATE = "dpmpp_2m"
CANDIDATE_STEPS = (10, 15, 20, 25)


def fewest_matching_steps(results: dict[tuple[str, int], dict]) -> int | None:
    """The fewest candidate steps whose FD interval overlaps the baseline's; None when none does."""
    base = results[BASELINE]
    for steps in sorted(s for name, s in results if name == CANDIDATE):
        row = results[(CANDIDATE, steps)]
        if row["fd_esc_ci_low"] <= base["fd_esc_ci_high"] and base["fd_esc_ci_low"] <= row["fd_esc_ci_high"]:
            return steps
    return None


def train_model(options: BenchOptions, steps: int) -> Path:
    from bench.train import TINY_CONFIG
    from core.config import load_config
    from training.train import train

    folder = options.work_dir / f"sample-matched-{steps}"
    if (folder / "model" / "audio.json").is_file():
        return folder / "model"
    config = load_config(
        TINY_CONFIG,
        [f"output_dir={folder}", f"data.source={options.source}", f"train.max_steps={steps}",
         f"train.checkpoint_every={steps}", "train.sample_classes=[0]", "sample.steps=2",
         f"data.cache_dir={options.work_dir / 'spectrograms'}", f"tracking.tracking_uri=sqlite:///{folder}.db"],
    )  # fmt: skip
    return train(config, show_progress=False).model_dir


def measure(options: BenchOptions, model_dir: Path, name: str, steps: int, per_class: int, bootstrap: int) -> dict:
    from core.generation import GenerationRequest, generate
    from evaluation.clips import read_manifest
    from evaluation.evaluate import read_generation_record, score_clips
    from evaluation.protocol import split_reference
    from evaluation.scoring import EvalOptions

    training = json.loads((model_dir / "audio.json").read_text())["training"]
    # Only the classes the protocol evaluates (those with real unseen clips): the others would be left out.
    split = split_reference(options.source, [], "train", training["filenames"], False, training["source"])
    classes = sorted(int(t) for t in split.held_out["target"].unique())
    out = options.work_dir / f"generated-{name}-{steps}"
    request = GenerationRequest(
        model=str(model_dir), out=str(out), per_class=per_class, classes=classes, scheduler=name, steps=steps,
        seed=0,
    )  # fmt: skip
    with Stopwatch() as watch:
        generate(request, show_progress=False)
    clips = read_manifest(out)
    record = read_generation_record(out)
    scoring = EvalOptions(bootstrap=bootstrap, scorer_epochs=5 if options.quick else EvalOptions.scorer_epochs)
    scored, _ = score_clips(
        clips, record, options.source, ["esc"], options=scoring, real_row=False,
        cache_dir=options.work_dir / "evaluation-cache", show_progress=False,
    )  # fmt: skip
    metrics = scored["generated"].metrics
    return {
        "clips_per_s": len(clips) / watch.seconds,
        "clips": len(clips),
        **{key: float(metrics[key]) for key in ("fd_esc", "fd_esc_ci_low", "fd_esc_ci_high", "esc_top1")},
    }


def run(options: BenchOptions) -> list[StageResult]:
    # --quick proves the stage runs; the recorded numbers train longer and generate 4 clips per class.
    train_steps, per_class, bootstrap = (8, 1, 100) if options.quick else (1000, 4, 1000)
    model_dir = train_model(options, train_steps)
    results = {}
    for name, steps in [BASELINE, *((CANDIDATE, s) for s in CANDIDATE_STEPS)]:
        results[(name, steps)] = measure(options, model_dir, name, steps, per_class, bootstrap)
        row = results[(name, steps)]
        log(f"  {name} {steps} steps: {row['clips_per_s']:.2f} clips/s, fd_esc {row['fd_esc']:.2f} "
            f"[{row['fd_esc_ci_low']:.2f}, {row['fd_esc_ci_high']:.2f}]")  # fmt: skip
    matched = fewest_matching_steps(results)
    # No candidate within the baseline's interval: the row compares the most steps tried, and says so.
    chosen = (CANDIDATE, matched or max(CANDIDATE_STEPS))
    return [
        StageResult(
            "sample_matched",
            results[chosen]["clips_per_s"],
            results[BASELINE]["clips_per_s"],
            "clips/s",
            f"{BASELINE[0]} {BASELINE[1]} steps",
            [results[chosen]["clips_per_s"]],
            [results[BASELINE]["clips_per_s"]],
            {
                "matched_steps": matched,
                "train_steps": train_steps,
                "per_class": per_class,
                "settings": {f"{name}_{steps}": row for (name, steps), row in results.items()},
            },
        )  # fmt: skip
    ]
