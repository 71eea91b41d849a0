"""The GPU study in one command: measure, train for a time budget, generate, score, log to MLflow.

    python -m bench.gpu_study --data /data/ESC-50 --minutes 8
    python -m bench.gpu_study --data ../shared/data/esc50-mini --minutes 6 train.prediction=v_prediction

1. Throughput of the config's UNet in fp32, bf16 and bf16 + channels_last (and with torch.compile under
   `--compile`), each in its own process: training and sampling samples/s, peak GPU memory, MFU.
2. `--config` (default configs/esc50_64.yaml, the experiment) with the KEY=VALUE overrides (the best recipe
   of the CPU study, say) trained for as many steps as the budget leaves: `--train-share` of what remains
   after the measurements and the spectrogram cache, at the rate measured in step 1 (bf16 where the GPU has
   it). The LR schedule spans exactly those steps.
3. `--per-class` clips per class (40, as the study) generated and scored under the evaluation protocol with
   every metric whose weights are present (the offline ESC scorer always; VGGish FAD and CLAP when their
   files are in `--ckpt-dir`), written to OUT/evaluation and logged to the training run.
4. OUT/gpu_study.json and gpu_study.md (throughput, planned and spent seconds per phase, steps, the
   scorer's table) and OUT/loss.png, logged to the run under `gpu_study/`.

What this path imports: torch, accelerate, diffusers (the UNet, schedulers, EMA), datasets and soundfile
(the spectrogram cache), numpy, pandas, matplotlib (figures) and
mlflow. Not Ray, and laion_clap / frechet_audio_distance only when their weights are present
(`tests/test_gpu_study.py` checks that Ray stays unimported).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from core.errors import UserError, exit_on_user_error
from core.files import write_text_atomic

REPO = Path(__file__).resolve().parent.parent
MODES = ("fp32", "bf16", "bf16+channels_last")
EFFICIENCY = 0.8  # the loop's rate against the bare UNet step measured in step 1 (data, EMA, logging)


def measure_modes(config_path: str, overrides: list[str], batch: int, steps: int, on_gpu: bool,
                  compile_model: bool) -> list[dict]:  # fmt: skip
    """Step 1: each mode in a fresh process (its own peak memory, its own compiled graph). Off the GPU only
    fp32, which is what the CPU trains in, for the plan."""
    from bench.common import in_child
    from bench.gpu import measure

    modes = [(mode, False) for mode in (MODES if on_gpu else MODES[:1])]
    if compile_model and on_gpu:
        modes.append(("bf16+channels_last", True))
    rows = []
    for mode, compiled in modes:
        try:
            rows.append(in_child(measure, mode, batch, steps, compiled, "cuda" if on_gpu else "cpu", config_path,
                                 tuple(overrides)))  # fmt: skip
        except Exception as error:  # torch.compile may lack a compiler on the box: say so, keep the rest
            rows.append({"mode": mode + ("+compile" if compiled else ""), "error": " ".join(str(error).split())[:300]})
    return rows


def measured_rate(rows: list[dict], precision: str, phase: str) -> float:
    """Samples/s measured for `phase` (train | sample) in the mode that `precision` trains and samples in."""
    mode = "bf16" if precision == "bf16" else "fp32"
    rates = [row[phase]["samples_per_s"] for row in rows if row.get("mode") == mode and phase in row]
    if not rates:
        raise UserError(f"no {mode} {phase} rate was measured to plan the budget (see the throughput table)")
    return rates[0]


def planned_steps(seconds: float, rows: list[dict], precision: str, batch_size: int) -> int:
    """Training steps that fit in `seconds` at the rate measured for `precision` (at least one)."""
    return max(1, math.floor(seconds * measured_rate(rows, precision, "train") / batch_size * EFFICIENCY))


def generation_seconds(clips: int, sampler_steps: int, rows: list[dict], precision: str) -> float:
    """Time to generate and score `clips`: their denoising steps at the measured rate, doubled for the vocoder,
    the embeddings and the rest (what the record's spent seconds show to be about right, or not)."""
    return 2 * clips * sampler_steps / measured_rate(rows, precision, "sample")


def loss_plot(losses: dict[int, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.plots import save_figure

    figure, axes = plt.subplots(figsize=(6, 3.5))
    steps = sorted(losses)
    axes.plot(steps, [losses[s] for s in steps])
    axes.set(xlabel="step", ylabel="training loss", title="training loss (mean over processes)")
    axes.set_yscale("log")
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def run_study(args: argparse.Namespace) -> dict:
    import torch

    from core.config import load_config
    from core.spectrograms import build_spectrogram_cache
    from evaluation.evaluate import EvaluationRequest, evaluate
    from evaluation.scoring import EvalOptions
    from training.train import train

    began = time.monotonic()
    deadline = began + args.minutes * 60
    out = Path(args.out).resolve()
    overrides = [f"output_dir={out / 'run'}", f"data.source={args.data}", *args.overrides]
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    config = load_config(args.config, overrides)  # a bad key fails here, before any work
    if (out / "run" / "config.yaml").exists():
        raise UserError(f"{out / 'run'} already holds a run: give another --out")
    on_gpu = torch.cuda.is_available()
    # The config's own train.mixed_precision wins; else bf16 where the GPU has it.
    precision = config.train.mixed_precision or ("bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no")
    record: dict = {"device": torch.cuda.get_device_name(0) if on_gpu else "cpu", "minutes": args.minutes,
                    "config": str(args.config), "overrides": list(args.overrides), "precision": precision}  # fmt: skip
    spent: dict[str, float] = {}

    started = time.monotonic()
    record["throughput"] = measure_modes(
        str(args.config), overrides, config.train.batch_size, args.measure_steps, on_gpu, args.compile
    )
    spent["measure"] = time.monotonic() - started
    started = time.monotonic()
    build_spectrogram_cache(config.data, show_progress=not args.no_progress)
    spent["cache"] = time.monotonic() - started

    from core.spectrograms import data_classes

    left = deadline - time.monotonic()
    clips = args.per_class * (len(args.classes) or len(data_classes(config.data)))
    generating = generation_seconds(clips, config.sample.steps, record["throughput"], precision)
    training_seconds = max(0.0, min(left * args.train_share, left - generating))
    steps = planned_steps(training_seconds, record["throughput"], precision, config.train.batch_size)
    record["planned_generation_seconds"] = generating
    config.train.max_steps = steps
    config.train.warmup_steps = min(config.train.warmup_steps, steps // 10)
    config.train.checkpoint_every = steps  # one checkpoint, at the end: the budget goes to training
    config.train.log_every = max(1, steps // 200)
    config.train.sample_every = 0
    config.train.mixed_precision = precision
    record.update(planned_training_seconds=training_seconds, steps=steps)
    print(f"gpu study: {steps} steps planned for {training_seconds:.0f} s of training ({precision})", flush=True)

    started = time.monotonic()
    result = train(config, show_progress=not args.no_progress)
    spent["train"] = time.monotonic() - started
    record["losses"] = {str(step): loss for step, loss in sorted(result.losses.items())}
    loss_plot(result.losses, out / "loss.png")

    started = time.monotonic()
    generation = {"per_class": args.per_class, "classes": args.classes or None, "seed": config.seed}
    options = EvalOptions(optional_metrics=True, ckpt_dir=args.ckpt_dir)  # what has no weights is left out, said
    outcome = evaluate(EvaluationRequest(
        model=str(result.model_dir), out=str(out / "evaluation"), reference=args.reference or args.data,
        metrics=["fad", "clap", "esc"], generation=generation, options=options, cache_dir=str(out / "cache"),
        tracking_uri=args.tracking_uri,
    ), show_progress=not args.no_progress)  # fmt: skip
    spent["generate_and_score"] = time.monotonic() - started
    spent["total"] = time.monotonic() - began
    record.update(spent_seconds=spent, metrics=outcome.metrics, run_id=result.run_id)
    write_text_atomic(out / "gpu_study.json", json.dumps(record, indent=2, sort_keys=True))
    write_text_atomic(out / "gpu_study.md", study_markdown(record, outcome.markdown))
    if result.run_id:
        from core.tracking import RunLogger

        run = RunLogger(result.run_id)
        for name in ("gpu_study.json", "gpu_study.md", "loss.png"):
            run.log_artifact(out / name, "gpu_study")
        run.flush(deadline_seconds=60)
    return record


def study_markdown(record: dict, scorer_table: str) -> str:
    from bench.gpu import format_gpu_table

    spent = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in record["spent_seconds"].items())
    lines = [
        f"# GPU study on {record['device']} ({record['minutes']:g}-minute budget)", "",
        f"Config {record['config']} {' '.join(record['overrides'])}; {record['steps']} steps in "
        f"{'fp32' if record['precision'] == 'no' else record['precision']} "
        f"(planned for {record['planned_training_seconds']:.0f} s); spent: {spent}.", "",
        "```", format_gpu_table({"gpu": record["device"], "modes": record["throughput"]}), "```", "",
        scorer_table,
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_study",
        description="Measure, train for a time budget, generate 40 clips per class, score, log to MLflow.",
        epilog="Example: python -m bench.gpu_study --data /data/ESC-50 --minutes 8 train.loss=l2",
    )
    parser.add_argument("--data", required=True, help="ESC-50 (or a collection in its layout) to train on")
    parser.add_argument("--minutes", type=float, default=8.0, help="the whole job's budget (default 8)")
    parser.add_argument("--config", default=str(REPO / "configs" / "esc50_64.yaml"), help="training config")
    parser.add_argument("--out", default="outputs/gpu_study", help="where everything goes (default outputs/gpu_study)")
    parser.add_argument("--per-class", type=int, default=40, help="clips generated per class (default 40)")
    parser.add_argument("--classes", type=lambda text: [int(c) for c in text.split(",") if c], default=[],
                        help="class ids to generate, e.g. 0,1,2 (default: all)")  # fmt: skip
    parser.add_argument("--reference", default="", help="real clips to score against (default: --data, protocol split)")
    parser.add_argument("--ckpt-dir", default="", help="VGGish / CLAP weights (default: $ESC50_EVAL_CKPT_DIR)")
    parser.add_argument("--train-share", type=float, default=0.6,
                        help="share of the time left after measuring that training gets (default 0.6)")  # fmt: skip
    parser.add_argument("--measure-steps", type=int, default=10, help="timed steps per throughput mode (default 10)")
    parser.add_argument("--compile", action="store_true", help="also measure bf16 + channels_last + torch.compile")
    parser.add_argument("--tracking-uri", default="", help="MLflow store (default $MLFLOW_TRACKING_URI, ./mlflow.db)")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of progress bars")
    parser.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE (the recipe to train)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or not 0 < args.train_share < 1 or args.per_class < 1 or args.measure_steps < 1:
        raise UserError("--minutes and --per-class, --measure-steps must be positive, --train-share in (0, 1)")
    return args


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    record = run_study(args)
    out = Path(args.out).resolve()
    print(f"gpu study: {out / 'gpu_study.md'} (gpu_study.json, loss.png, evaluation/, run/)")
    if record.get("run_id"):
        from core.tracking import where_to_look

        print(where_to_look(record["run_id"], "MLflow run (under gpu_study/ and evaluation/)"))
    return record


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
