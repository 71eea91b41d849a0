"""Generate clips of any class from a trained model.

    python -m training.generate --model outputs/esc50_64 --per-class 40 --out generated/

Writes OUT/<category>/<n>.wav, OUT/manifest.csv (`file,target,category`; `file` relative to OUT), the
format `evaluation.evaluate --generated` reads, and OUT/generation.json (what made the clips).
Sampler, steps, guidance and Griffin-Lim iterations default to the model's own (its config's sample.*).
"""

from __future__ import annotations

import argparse
import json
import os

from core.diffusion.samplers import SAMPLE_CLIPS, SAMPLERS
from core.errors import exit_on_user_error
from core.generation import GenerationRequest, generate, parse_classes
from core.vocoders import VOCODERS, vocoder_choice


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="training output_dir, saved model folder, or MLflow URI (runs:/ID/model)"
    )
    parser.add_argument("--out", required=True, help="folder for OUT/<category>/<n>.wav and OUT/manifest.csv")
    parser.add_argument("--per-class", type=int, default=40, help="clips per class (default 40, the study's)")
    parser.add_argument("--classes", help="comma-separated class ids or names (default: all 50)")
    parser.add_argument("--scheduler", choices=list(SAMPLERS), help="sampler (default: the model's sample.scheduler)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's sample.steps)")
    parser.add_argument("--guidance-scale", type=float,
                        help="classifier-free guidance, 1 = none (default: the model's sample.guidance_scale)",
                        )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--griffin-lim-iters", type=int, help="default: the model's sample.griffin_lim_iters")
    parser.add_argument("--griffin-lim-momentum", type=float,
                        help="fast Griffin-Lim's momentum, 0 = plain (default: the model's)")  # fmt: skip
    parser.add_argument(
        "--vocoder",
        help=f"{' or '.join(VOCODERS)}, or a HiFi-GAN checkpoint folder / cached hub id for hifigan "
        "(default: the model's sample.vocoder)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip", default="", choices=list(SAMPLE_CLIPS),
                        help="x0 clipping at each step (default: the model's own sample.clip)")  # fmt: skip
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    request = GenerationRequest(
        model=args.model, out=args.out, per_class=args.per_class, classes=parse_classes(args.classes),
        scheduler=args.scheduler, steps=args.steps, guidance_scale=args.guidance_scale, batch_size=args.batch_size,
        griffin_lim_iters=args.griffin_lim_iters, seed=args.seed, device=args.device, clip=args.clip,
        griffin_lim_momentum=args.griffin_lim_momentum, **vocoder_choice(args.vocoder),
    )  # fmt: skip
    manifest = generate(request)
    print(f"clips: {manifest.parent.resolve()} ({manifest.name}, generation.json)")
    run_id = json.loads((manifest.parent / "generation.json").read_text()).get("mlflow_run_id", "")
    if run_id:  # generation has no run of its own: the model's, where its training and evaluations are
        print(model_run_lines(run_id))


def model_run_lines(run_id: str) -> str:
    """The model's run and how to view it, when it is in the current store (MLFLOW_TRACKING_URI, else ./mlflow.db)."""
    import mlflow

    from core.secrets import redact_uri
    from core.tracking import fail_fast_requests, where_to_look

    uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    try:
        with fail_fast_requests(5):
            mlflow.tracking.MlflowClient(uri).get_run(run_id)
    except Exception:
        return (f"the model's MLflow run: {run_id} (not in {redact_uri(uri)}; set MLFLOW_TRACKING_URI to its "
                "store to view it)")  # fmt: skip
    return where_to_look(run_id, "the model's MLflow run", uri)


if __name__ == "__main__":
    main()
