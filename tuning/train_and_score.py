"""What one trial does on one process: train (or continue), then generate and score, with the single-run functions.

`tuning.trial` (one process) and `tuning.distributed` (rank 0 of a Ray Train job) both call these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.config import Config, sample_seed
from core.files import write_text_atomic
from tuning.spec import SweepSpec

FAIL_ONCE_ENV = "TUNING_FAIL_ONCE_DIR"  # tests: each trial fails once, after training, leaving a marker here


@dataclass
class TrialContext:
    """What every trial shares; rebuilt by the driver on each (re)start, so it is never stale."""

    spec: SweepSpec
    sweep_dir: str  # absolute: <storage_path>/<name>
    tracking_uri: str  # an http(s) MLflow server
    parent_run_id: str
    fail_once_dir: str = ""


def stage_end_step(config: Config, stages: int, stage: int) -> int:
    """ASHA cuts the training budget into equal stages, each scored; the LR schedule spans all of them."""
    return max(1, round(config.train.max_steps * (stage + 1) / stages))


def train_and_score(
    context: TrialContext,
    config: Config,
    resume: str | None,
    tags: dict[str, str],
    stage: int,
    train_only: bool = False,
) -> tuple[dict[str, float], str]:
    """Train (or continue), then generate and score on this process; returns (metrics, MLflow run id)."""
    from training.train import train

    result = train(
        config, resume=resume, show_progress=False, parent_run_id=context.parent_run_id, run_tags=tags,
        stop_after_steps=stage_end_step(config, context.spec.stages, stage),
    )  # fmt: skip
    if train_only:
        return {}, result.run_id
    _maybe_fail_once(context, Path(config.output_dir))
    return generate_and_score(context, config, result.model_dir, result.run_id, stage), result.run_id


def generate_and_score(context: TrialContext, config: Config, model_dir: Path, run_id: str, stage: int) -> dict:
    from evaluation import evaluate as evaluation
    from evaluation.scoring import EvalOptions

    settings = context.spec.settings
    output_dir = Path(config.output_dir)
    generated = output_dir / ("generated" if context.spec.stages == 1 else f"generated_stage{stage + 1}")
    generation = {
        "per_class": settings.generate.per_class, "classes": list(settings.generate.classes) or None,
        "scheduler": config.sample.scheduler, "steps": config.sample.steps,
        "guidance_scale": config.sample.guidance_scale, "batch_size": config.sample.batch_size,
        "griffin_lim_iters": config.sample.griffin_lim_iters, "seed": sample_seed(config),
    }  # fmt: skip
    evaluate = settings.evaluate
    scored, protocol = evaluation.generate_and_score(
        model_dir, generated, generation, evaluate.reference or config.data.source, list(evaluate.metrics),
        options=EvalOptions.from_options({"skip_bad": config.data.skip_bad, **dict(evaluate.options)}),
        real_row=evaluate.ceiling,
        reference_folds=tuple(evaluate.reference_folds), sample_rate=config.data.sample_rate,
        cache_dir=evaluate.cache_dir, show_progress=False,
    )  # fmt: skip
    metrics = evaluation.flat_metrics(scored)
    evaluation_dir = output_dir / ("evaluation" if context.spec.stages == 1 else f"evaluation_stage{stage + 1}")
    write_text_atomic(evaluation_dir / "metrics.json", json.dumps(metrics, indent=2))
    write_text_atomic(evaluation_dir / "protocol.json", json.dumps(protocol, indent=2, sort_keys=True))
    if run_id:
        evaluation.log_evaluation(run_id, metrics, evaluation_dir, tags=protocol)
    return {name: float(value) for name, value in metrics.items()}


def _maybe_fail_once(context: TrialContext, output_dir: Path) -> None:
    """Fault injection for the retry test: the first attempt of each trial dies after training."""
    if not context.fail_once_dir:
        return
    marker = Path(context.fail_once_dir) / output_dir.name
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("failed once\n")
        raise RuntimeError(f"injected failure for {output_dir.name} ({FAIL_ONCE_ENV})")
