"""A trial that trains on several GPUs: the trial drives a Ray Train `TorchTrainer`.

Each Ray Train worker calls the same `training.train.train`; Ray Train has already set up the torch
process group and the RANK/WORLD_SIZE/LOCAL_RANK variables, so the Accelerator created inside
`train` joins it as a multi-GPU (or multi-CPU) job. The first worker then generates and scores
on its device and leaves the metrics in the trial folder, where the trial reads them to report to
Tune (the trial reports itself, so Ray Train's own reports are not needed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import UserError
from core.files import write_text_atomic
from tuning.train_and_score import generate_and_score, train_and_score

RESULT_FILE = "distributed_result.json"


def _worker_loop(arguments: dict[str, Any]) -> None:
    import ray.train
    import torch

    os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ["MLFLOW_TRACKING_URI"] = arguments["context"].tracking_uri
    torch.set_num_threads(max(1, int(arguments["threads"])))
    context, config, stage = arguments["context"], arguments["config"], arguments["stage"]
    _, run_id = train_and_score(context, config, arguments["resume"], arguments["tags"], stage, train_only=True)
    if ray.train.get_context().get_world_rank() != 0:
        return
    model_dir = Path(config.output_dir) / "model"
    metrics = generate_and_score(context, config, model_dir, run_id, stage)
    result = Path(config.output_dir) / RESULT_FILE
    write_text_atomic(result, json.dumps({"metrics": metrics, "run_id": run_id, "stage": arguments["stage"]}))


def train_and_score_distributed(
    context, config: Config, resume: str | None, tags: dict[str, str], stage: int
) -> tuple[dict[str, float], str]:
    """Run training on `workers_per_trial` Ray Train workers; returns (metrics, MLflow run id).

    Only rank 0 creates the MLflow run (training's rule), and it alone writes run.json.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    settings = context.spec.settings
    workers = context.spec.workers
    gpus_per_worker = settings.gpus_per_trial / workers
    cpus_per_worker = max(settings.cpus_per_trial / workers, 1e-3)
    result_file = Path(config.output_dir) / RESULT_FILE
    result_file.unlink(missing_ok=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "context": context, "config": config, "resume": resume, "tags": tags, "stage": stage,
            "threads": max(1, int(cpus_per_worker)),
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})},
        ),
        run_config=RunConfig(
            name=f"train-{Path(config.output_dir).name}", storage_path=str(Path(context.sweep_dir) / "ray_train")
        ),
    )  # fmt: skip
    trainer.fit()
    if not result_file.is_file():
        raise UserError(f"distributed training of {config.output_dir} finished without {RESULT_FILE}")
    result = json.loads(result_file.read_text())
    return result["metrics"], result["run_id"]
