"""Quality during training (`train.eval_every`): a few clips per class scored by the offline scorer at a step.

Logged as `quick_eval/fd_esc`, `quick_eval/esc_top1`, ... against the training step, so the run's charts show
quality rising beside the loss. These are few-clip numbers under the full protocol (the training clips kept out
of the reference), without intervals: a trend, not the table; `evaluation.evaluate` makes the table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from core.config import Config, sample_seed
from core.generation import GenerationRequest, make_clips, write_manifest
from core.spectrograms import mel_settings, training_clips, training_record

SECTION = "quick_eval/"


class QuickEvaluation:
    """Prepared once, before the output folder is claimed (a reference that cannot serve fails then, and the
    offline scorer is fitted, or read from its cache, before the first step); called at every eval step."""

    def __init__(self, config: Config, categories: list[str]):
        from evaluation.evaluate import prepared_evaluator
        from evaluation.scoring import EvalOptions

        data = config.data
        record = {
            "mel": json.loads(mel_settings(data).to_json()),
            "training": training_record(data, list(training_clips(data)["filename"])),
            "categories": list(categories),
        }
        options = EvalOptions(bootstrap=0, skip_bad=data.skip_bad)
        self.evaluator = prepared_evaluator(
            record, data.source, ["esc"], options, sample_rate=data.sample_rate,
            cache_dir=config.train.eval_cache_dir, show_progress=False,
        )  # fmt: skip
        self.config = config

    def __call__(self, diffusion, step: int) -> dict[str, float]:
        """Clips of every evaluated class from `diffusion` (the EMA weights) at `step`, scored; the metrics."""
        from evaluation.clips import read_manifest

        sample, per_class = self.config.sample, self.config.train.eval_per_class
        folder = Path(self.config.output_dir) / "quick_eval" / f"step_{step:06d}"
        shutil.rmtree(folder, ignore_errors=True)  # a resumed run re-evaluates the step
        request = GenerationRequest(
            model="", out=str(folder), per_class=per_class, scheduler=sample.scheduler, steps=sample.steps,
            guidance_scale=sample.guidance_scale, batch_size=sample.batch_size, vocoder=sample.vocoder,
            griffin_lim_iters=sample.griffin_lim_iters, griffin_lim_momentum=sample.griffin_lim_momentum,
            vocoder_path=sample.vocoder_path, seed=sample_seed(self.config), clip=sample.clip,
        )  # fmt: skip
        classes = self.evaluator.split.classes
        rows = make_clips(diffusion, request, classes, folder, False, str(diffusion.unet.device))
        write_manifest(folder, rows)
        (folder / "generation.json").write_text(json.dumps({"categories": diffusion.categories}))
        # Scored as generated clips: never from the real clips' prediction cache, and with the memorization share.
        scored = self.evaluator.score(read_manifest(folder), desc="quick evaluation", generated=True)
        shutil.rmtree(folder, ignore_errors=True)  # scored: a long run would pile up gigabytes of them
        return {SECTION + name: value for name, value in scored.metrics.items() if not name.endswith("_inf")}
