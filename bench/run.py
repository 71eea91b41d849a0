"""Every stage of the tool against what researchers would use instead, side by side.

    python -m bench.run [--quick] [--json OUT] [--source ESC50_FOLDER] [--stages preprocess,train]

Prints one row per stage: our speed, the baseline's, the ratio (ours / baseline, higher is better)
and the goal of issue 5 beside it. With CUDA present it also runs the GPU precision study.
"""

from __future__ import annotations

import os

# Set before anything imports laion_clap (via frechet_audio_distance) or datasets: no hub retries offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.common import BenchOptions, StageResult, cuda_available, log  # noqa: E402
from core.config import DEFAULT_SOURCE  # noqa: E402
from core.errors import UserError, exit_on_user_error  # noqa: E402
from core.esc50 import read_clips  # noqa: E402
from core.files import write_text_atomic

STAGES = ("preprocess", "train", "sample", "sample_matched", "evaluate", "sweep_overhead", "sweep_scaling")


def stage_runner(name: str):
    """The module that measures a stage; imported late so that `--stages` pays only for what it runs."""
    if name == "preprocess":
        from bench import preprocess as module
    elif name == "train":
        from bench import train as module
    elif name == "sample":
        from bench import sample as module
    elif name == "sample_matched":
        from bench import sample_matched as module
    elif name == "evaluate":
        from bench import evaluate as module
    else:
        from bench import sweeps as module

        return lambda options: module.run(options, name)
    return module.run


def run_bench(stages: list[str], options: BenchOptions, gpu: str = "auto") -> dict:
    """Measure `stages`; returns {stage: {"ours", "baseline", "unit", "ratio", ...}} plus a `_machine` entry."""
    results: list[StageResult] = []
    for name in stages:
        log(f"[bench] {name} ...")
        started = time.perf_counter()
        results.extend(stage_runner(name)(options))
        log(f"[bench] {name} done in {time.perf_counter() - started:.0f} s")
    report = {r.stage: r.to_json() for r in results}
    report["_machine"] = machine_description(options)
    if gpu == "on" or (gpu == "auto" and cuda_available()):
        from bench import gpu as gpu_bench

        report["_gpu"] = gpu_bench.run(quick=options.quick)
    return report


def machine_description(options: BenchOptions) -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "quick": options.quick,
        "repeats": options.repeats,
        "source": options.source,
    }


def format_table(report: dict) -> str:
    header = f"{'stage':<18} {'ours':>10} {'baseline':>10} {'unit':<10} {'ratio':>7} {'goal':>6}  result"
    lines = [header, "-" * len(header)]
    for stage, row in report.items():
        if stage.startswith("_"):
            continue
        goal = f">={row['goal']:g}x" if row.get("goal") else ""
        lines.append(
            f"{stage:<18} {row['ours']:>10.3g} {row['baseline']:>10.3g} {row['unit']:<10} "
            f"{row['ratio']:>6.2f}x {goal:>6}  {row.get('verdict', '')}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: proves the bench works in minutes")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="ESC-50 folder (default: ../shared/data/esc50-mini)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument(
        "--repeats", type=int, help="repetitions per measurement, medians reported (default 3; 1 with --quick)"
    )
    parser.add_argument("--work-dir", type=Path, help="scratch folder (default: a temporary folder, removed after)")
    parser.add_argument("--gpu", choices=["auto", "on", "off"], default="auto", help="GPU precision study (auto: CUDA)")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"--stages: unknown stage '{unknown[0]}' (choose from {', '.join(STAGES)})")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        raise UserError(f"--repeats must be >= 1, not {repeats}")
    read_clips(args.source)  # a bad --source fails here, in one line, before any work
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    options = BenchOptions(quick=args.quick, source=args.source, work_dir=work_dir.resolve(), repeats=repeats)
    try:
        report = run_bench(stages, options, gpu=args.gpu)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(format_table(report))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2, sort_keys=True))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
