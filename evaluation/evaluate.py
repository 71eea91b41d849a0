"""Score generated clips: FAD, CLAP accuracy and the offline ESC scorer, as the study's table, logged to MLflow.

    python -m evaluation.evaluate --generated DIR --reference SOURCE --metrics fad,clap,esc --json OUT.json
    python -m evaluation.evaluate --model outputs/esc50_64 --per-class 40 --metrics esc

Every table has a "real data" row (real held-out clips scored the same way) beside the generated clips.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import DEFAULT_SOURCE
from core.diffusion.samplers import SAMPLERS
from core.errors import UserError, exit_on_user_error
from core.esc50 import ESC50_CATEGORIES
from core.files import write_text_atomic
from core.vocoders import vocoder_choice
from evaluation import table
from evaluation.clips import read_manifest
from evaluation.fad import CKPT_DIR_ENV, FAD_MODELS
from evaluation.metrics import REAL_PREFIX, REPRESENTATION_PREFIX, logged_name
from evaluation.protocol import check_interval_sizes, split_reference
from evaluation.scoring import METRIC_GROUPS, EvalOptions, Evaluator, ScoredSet, parse_metric_groups

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
DEFAULT_SAMPLE_RATE = 22050  # the data's default rate (core.config.DataConfig.sample_rate)
REAL_ROW = "real data (held-out)"
REPRESENTATION_ROW = "real data through mel + Griffin-Lim (representation ceiling)"


def score_generated(
    generated_dir: str | Path | None, reference: str, metrics: list[str], **options
) -> dict[str, float]:
    """Flat metrics (`fad_vggish`, `ca_top1`..., `fd_esc`, `esc_top1`..., each with `_ci_low/_ci_high`, FDs with
    `_inf`, `memorization_<group>`) of the clips listed in `generated_dir`, under the protocol of
    `evaluation.protocol`: the generator's training clips (from `generation.json` beside the manifest, or the
    `trained_on` option) are never the reference.

    Keyword options are `score_with_protocol`'s (`reference_folds`, `sample_rate`, `cache_dir`, `show_progress`).
    `sample_rate` is the generator's rate (the bandwidth both sides are limited to; the offline scorer's rate):
    0 = the one its generation record names, else 22,050 Hz. FAD and CLAP resample to their own models' rates.
    `options` are `EvalOptions` fields, and: `real_row=True` adds the real held-out clips' metrics as
    `real_<name>` and, when the generation record names the mel settings, the representation ceiling's as
    `repr_<name>`; `run_id=ID` logs the result to that MLflow run (no artifacts). `generated_dir=None` scores
    only the real held-out clips (`score_real`).
    """
    run_id = str(options.pop("run_id", "") or "")
    result, tags = score_with_protocol(generated_dir, reference, metrics, **options)
    if run_id:
        log_evaluation(run_id, result, None, tags=tags)
    return result


def score_with_protocol(
    generated_dir: str | Path | None,
    reference: str,
    metrics: list[str],
    *,
    reference_folds: list[int] | tuple = (),
    sample_rate: int = 0,
    cache_dir: str | Path = ".cache/evaluation",
    show_progress: bool = True,
    **options,
) -> tuple[dict[str, float], dict[str, str]]:
    """`score_generated`'s metrics, and the protocol they were measured under (the `evaluation.*` tags)."""
    real_row = bool(options.pop("real_row", False))
    record = read_generation_record(generated_dir) if generated_dir is not None else {}
    evaluator = prepared_evaluator(
        record, reference, metrics, EvalOptions.from_options(options), reference_folds, sample_rate, cache_dir,
        show_progress,
    )  # fmt: skip
    if generated_dir is None:
        result = dict(evaluator.score(evaluator.split.held_out, desc="real").metrics)
    else:
        result = flat_metrics(score_sets(evaluator, read_manifest(generated_dir), record, real_row))
    return result, evaluator.describe()


def score_real(reference: str, metrics: list[str], **options) -> dict[str, float]:
    """The same metrics for the real held-out clips of `reference`: the ceiling for generated clips.

    Takes `score_generated`'s keyword options (`real_row` is ignored; `run_id` logs the result there); pass
    `trained_on` (the generator's training clips, `[]` for none of these) or `allow_training_overlap=True`.
    """
    return score_generated(None, reference, metrics, **options)


GENERATED = "generated"
REAL = "real"
REPRESENTATION = "representation"
ROW_PREFIX = {REAL: REAL_PREFIX, REPRESENTATION: REPRESENTATION_PREFIX, GENERATED: ""}  # how each row is logged


def score_sets(evaluator: Evaluator, clips, record: dict | None, real_row: bool = True) -> dict[str, ScoredSet]:
    """The generated clips, and with `real_row` the real ceiling and (when `record` names the generator's mel
    settings) the representation ceiling: real held-out clips through its mel settings and vocoder, scored alike."""
    scored = {}
    if real_row:
        scored[REAL] = evaluator.score(evaluator.split.held_out, desc="real")
        if record and record.get("mel"):
            from core.audio import MelSettings
            from evaluation.roundtrip import cached_round_trip

            mel = MelSettings(**record["mel"])
            trip = cached_round_trip(
                evaluator.split.held_out, mel, record, evaluator.cache_dir, 0, evaluator.show_progress
            )
            scored[REPRESENTATION] = evaluator.score(trip, desc="representation")
    scored[GENERATED] = evaluator.score(clips, desc="generated", generated=True)
    return scored


def generate_and_score(
    model_dir: Path,
    generated: Path,
    generation: dict,
    reference: str,
    metrics: list[str],
    *,
    options: EvalOptions | None = None,
    real_row: bool = True,
    existing: str = "replace",
    **scoring,
) -> tuple[dict[str, ScoredSet], dict[str, str]]:
    """Generate a model's clips into `generated` (`generation`: `GenerationRequest` fields), then score them
    under the protocol: the one path from a model to its metrics (evaluate --model, sweep trials, the demo).

    The protocol is settled (a leaking or unknown reference refused) and every metric's weights are loaded
    before the first clip is made. Clips already in `generated` are reused only when exactly these (same
    weights, settings and seed); otherwise replaced, or with `existing="refuse"` refused (`core.generation`).
    `scoring`: `score_clips`'s keywords. Returns the scored sets and the tags.
    """
    from core.generation import GenerationRequest, generate

    record = model_record(model_dir, generation)
    evaluator = prepared_evaluator(record, reference, metrics, options or EvalOptions(), **scoring)
    request = GenerationRequest(model=str(model_dir), out=str(generated), **generation)
    generate(request, evaluator.show_progress, existing=existing)
    scored = score_sets(evaluator, read_manifest(generated), read_generation_record(generated), real_row)
    return scored, evaluator.describe()


def score_clips(
    clips,
    record: dict,
    reference: str,
    metrics: list[str],
    *,
    options: EvalOptions | None = None,
    real_row: bool = True,
    **scoring,
) -> tuple[dict[str, ScoredSet], dict[str, str]]:
    """Clips already made (`record`: their generation record, or {}) scored under the protocol."""
    evaluator = prepared_evaluator(record, reference, metrics, options or EvalOptions(), **scoring)
    return score_sets(evaluator, clips, record, real_row), evaluator.describe()


def prepared_evaluator(
    record: dict,
    reference: str,
    metrics: list[str],
    options: EvalOptions,
    reference_folds: list[int] | tuple = (),
    sample_rate: int = 0,
    cache_dir: str | Path = ".cache/evaluation",
    show_progress: bool = True,
) -> Evaluator:
    """The evaluator for clips with this generation `record`, its weights loaded (missing ones fail here)."""
    options = _protocol_options(options, record)
    rate = generator_rate(record, sample_rate)
    evaluator = build_evaluator(reference, metrics, reference_folds, rate, cache_dir, show_progress, options)
    # Clips made before the class set was recorded are ESC-50's; no record (real clips only, a bare folder
    # whose manifest read_manifest checks): nothing to compare.
    generator = record.get("categories") or (list(ESC50_CATEGORIES) if record else evaluator.split.categories)
    if list(generator) != evaluator.split.categories:
        raise UserError(
            f"the generator's {len(generator)} classes ({', '.join(generator[:3])}, ...) are not the "
            f"{len(evaluator.split.categories)} classes of --reference {reference} "
            f"({', '.join(evaluator.split.categories[:3])}, ...): score clips against the collection they model"
        )
    return evaluator.prepare()


def flat_metrics(scored: dict[str, ScoredSet]) -> dict[str, float]:
    flat = {}
    for kind, result in scored.items():
        flat.update({f"{ROW_PREFIX[kind]}{name}": value for name, value in result.metrics.items()})
    return flat


def generator_rate(record: dict, given: int = 0) -> int:
    """The generated clips' sample rate: from their record; a different one asked for would unmatch the bandwidth."""
    recorded = int((record.get("mel") or {}).get("sample_rate", 0))
    if recorded and given and recorded != given:
        raise UserError(
            f"sample rate {given} Hz asked for, but the clips were generated at {recorded} Hz (generation.json): "
            "real clips are limited to the generator's bandwidth, so leave it out"
        )
    return recorded or given or DEFAULT_SAMPLE_RATE


def read_generation_record(folder: str | Path) -> dict:
    """`generation.json` beside a generated folder's manifest (written by training.generate); {} when absent."""
    from core.generation import GENERATION_RECORD

    path = Path(folder) / GENERATION_RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    if not isinstance(record, dict):
        raise UserError(f"{path} is not a JSON object")
    return record


def _protocol_options(options: EvalOptions, record: dict) -> EvalOptions:
    """The generator's training clips from its generation record, unless given; the level the generator writes
    at (`peak=-1`): a fixed-level model's clips keep their loudness, so real clips keep theirs too."""
    if options.peak < 0 and (record.get("mel") or {}).get("level") == "fixed":
        options = dataclasses.replace(options, peak=0.0)
    if options.trained_on is None and isinstance(record.get("training"), dict):
        training = record["training"]
        return dataclasses.replace(
            options, trained_on=list(training.get("filenames", [])), training_source=training.get("source", "")
        )
    return options


def build_evaluator(
    reference, metrics, folds, sample_rate, cache_dir, show_progress, options: EvalOptions
) -> Evaluator:
    split = split_reference(
        reference, list(folds), options.hub_split, options.trained_on, options.allow_training_overlap,
        options.training_source, options.skip_bad,
    )  # fmt: skip
    check_interval_sizes(split, options.bootstrap)
    return Evaluator(split, metrics, options, cache_dir, sample_rate, show_progress)


def log_evaluation(
    run_id: str, metrics: dict[str, float], artifacts_dir: Path | None, tags: dict[str, str] | None = None
) -> None:
    """Log metrics (in their sections: `eval/fd_esc`, `ceiling/real_fd_esc`), tags and the files directly in
    `artifacts_dir` (tables, figures, JSON; not sub-folders such as the generated clips) under `evaluation/` to
    an existing MLflow run."""
    from mlflow.tracking import MlflowClient

    from core.tracking import RunLogger

    run = RunLogger(run_id)
    run.log_metrics({logged_name(name): value for name, value in metrics.items()}, step=0)
    if not run.flush(deadline_seconds=30):
        raise UserError(f"could not log the evaluation metrics to MLflow run {run_id}")
    if tags:
        MlflowClient().log_batch(run_id, tags=[_tag(k, v) for k, v in tags.items()])
    if artifacts_dir is not None:
        for path in sorted(Path(artifacts_dir).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                run.log_artifact(path, "evaluation")
        if (Path(artifacts_dir) / "clips").is_dir():  # a few scored clips per class (keep_scored_clips)
            run.log_artifacts(Path(artifacts_dir) / "clips", "evaluation/clips")


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, str(value)[:5000])


@dataclass
class EvaluationRequest:
    generated: str = ""  # a folder with manifest.csv; with `model` too, where its clips are (reused if exactly
    # these: same weights, settings, seed) or are made (into an empty folder; other clips there are refused)
    model: str = ""  # a model to generate from first (and whose MLflow run receives the results)
    reference: str = DEFAULT_SOURCE
    reference_folds: list[int] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: list(METRIC_GROUPS))
    out: str = ""  # "" = outputs/evaluation/<name of the generated folder or model>
    json: str = ""
    real_row: bool = True
    sample_rate: int = 0  # the generator's rate: 0 = the one its record names, else 22,050 Hz
    cache_dir: str = ".cache/evaluation"
    mlflow: bool = True
    tracking_uri: str = ""
    experiment: str = "esc50-diffusion"
    run_id: str = ""  # log here instead of the model's run
    new_run: bool = False  # a new run linked to the model's instead of the model's run itself
    generation: dict = field(default_factory=dict)  # GenerationRequest fields (per_class, steps, ...)
    log_clips: int = 2  # scored clips per class kept in OUT/clips and logged (evaluation/clips), 0 = none
    options: EvalOptions = field(default_factory=EvalOptions)


@dataclass
class EvaluationOutcome:
    metrics: dict[str, float]  # generated metrics, the real row's prefixed `real_`, the representation's `repr_`
    rows: dict[str, dict[str, float]]
    out_dir: Path
    run_id: str
    markdown: str


def evaluate(request: EvaluationRequest, show_progress: bool = True) -> EvaluationOutcome:
    """Generate (when given a model), score, write the tables and figures, log to MLflow."""
    if not request.generated and not request.model:
        raise UserError("give --generated DIR (clips + manifest.csv) or --model MODEL (to generate first)")
    from core.diffusion.model import resolve_model_folder

    if request.mlflow:  # an unreachable tracking server fails now, not after the scoring
        from core.tracking import configure_tracking

        configure_tracking(request.tracking_uri)
    groups = parse_metric_groups(request.metrics)
    model_dir = resolve_model_folder(request.model) if request.model else None
    name = Path(request.generated or request.model).resolve().name
    if model_dir is not None and name in ("model", ""):
        name = model_dir.parent.name  # a training output_dir's model/: name it after the run
    out = Path(request.out or Path("outputs") / "evaluation" / name)
    generated = Path(request.generated) if request.generated else out / "generated"
    scoring = {
        "reference_folds": request.reference_folds, "sample_rate": request.sample_rate, "cache_dir": request.cache_dir,
        "show_progress": show_progress, "real_row": request.real_row,
    }  # fmt: skip
    if model_dir is not None:  # clips of this model: made now, or reused when exactly these were made before
        scored, tags = generate_and_score(
            model_dir, generated, request.generation, request.reference, groups, options=request.options,
            existing="refuse" if request.generated else "replace", **scoring,
        )  # fmt: skip
    else:
        clips = read_manifest(generated)  # a bad folder fails before any work
        record = read_generation_record(generated)
        scored, tags = score_clips(clips, record, request.reference, groups, options=request.options, **scoring)
    labels = {REAL: REAL_ROW, REPRESENTATION: REPRESENTATION_ROW, GENERATED: name}
    rows = {labels[kind]: result.metrics for kind, result in scored.items()}
    flat = flat_metrics(scored)
    tags = {**tags, "evaluation.clips": str(generated.resolve())}
    if REPRESENTATION not in scored and request.real_row:
        tags["evaluation.representation_ceiling"] = "not computed: the generated clips record no mel settings"
    markdown = write_outputs(out, rows, scored[GENERATED], flat, request.json, tags, scored.get(REAL))
    keep_scored_clips(read_manifest(generated), scored[GENERATED], out / "clips", request.log_clips)
    print(markdown)

    run_id = ""
    if request.mlflow:
        run_id = _target_run(request, model_dir)
        log_evaluation(run_id, flat, out, tags=tags)
    print(f"evaluation: {out.resolve()} (table.md, table.csv, per_class.png, confusion_*.png, clips/)")
    if run_id:
        from core.tracking import where_to_look

        print(where_to_look(run_id, "MLflow run (under evaluation/)"))
    return EvaluationOutcome(flat, rows, out, run_id, markdown)


def keep_scored_clips(clips: pd.DataFrame, scored: ScoredSet, folder: Path, per_class: int) -> None:
    """The first `per_class` scored clips of each evaluated class copied to `folder` (evaluation/clips in MLflow,
    where the UI plays them): a few of the clips behind the numbers, to listen to beside the table."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    if per_class <= 0:
        return
    evaluated = set(scored.targets.tolist())
    chosen = clips[clips["target"].isin(evaluated)].groupby("target", sort=True).head(per_class)
    for row in chosen.itertuples():  # `source`: the clip's path, inside the generated folder
        target = folder / str(row.category) / Path(str(row.filename)).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row.source, target)


def write_outputs(
    out: Path, rows: dict, generated: ScoredSet, flat: dict[str, float], json_path: str, tags: dict[str, str],
    real: ScoredSet | None = None,
) -> str:  # fmt: skip
    """table.md (the protocol above the tables), table.csv, protocol.json, per-class files (generated beside real),
    confusion matrices."""
    out.mkdir(parents=True, exist_ok=True)
    table.write_tables(rows, out, tags)
    table.write_per_class(generated.per_class(), out, real.per_class() if real is not None else None)
    for group, scores in generated.class_scores.items():
        title = f"{'CLAP zero-shot' if group == 'clap' else 'offline ESC scorer'}: generated clips"
        table.write_confusion(scores, generated.targets, out / f"confusion_{group}.png", title, generated.categories)
    write_text_atomic(out / "metrics.json", json.dumps(flat, indent=2, sort_keys=True))
    if json_path:
        write_text_atomic(json_path, json.dumps(flat, indent=2, sort_keys=True))
    return table.markdown(rows, tags)


def model_record(model_dir: Path, generation: dict) -> dict:
    """What a model's clips will be made with, from its audio.json: mel settings and training record."""
    from core.diffusion.model import MODEL_MANIFEST

    manifest = json.loads((model_dir / MODEL_MANIFEST).read_text())
    sampling = {**(manifest.get("sampling") or {}), **{k: v for k, v in generation.items() if v is not None}}
    return {"mel": manifest.get("mel"), "training": manifest.get("training"), "categories": manifest.get("categories"),
            **sampling}  # fmt: skip


def _target_run(request: EvaluationRequest, model_dir: Path | None) -> str:
    """The model's run (from audio.json) or --run-id; a new run, linked to it, when asked or when it is unknown.

    Launched by `mlflow run` (MLFLOW_RUN_ID set), the launcher's run is that new run.
    """
    import mlflow

    from core.diffusion.model import MODEL_MANIFEST
    from core.tracking import configure_tracking

    client = mlflow.tracking.MlflowClient()  # `evaluate` has pointed MLflow at the tracking URI
    linked = request.run_id
    if not linked and model_dir is not None:
        linked = json.loads((model_dir / MODEL_MANIFEST).read_text()).get("mlflow_run_id", "")
    launcher = os.environ.get("MLFLOW_RUN_ID", "")
    if launcher and launcher != linked:
        if linked:
            client.set_tag(launcher, "evaluates_run_id", linked)
        return launcher
    experiment_id = None
    if linked:
        try:
            experiment_id = client.get_run(linked).info.experiment_id
        except Exception as error:
            log.warning("run %s is not in this tracking store (%s): logging to a new run", linked, error)
            experiment_id = None
        if experiment_id is not None and not request.new_run:
            return linked
    if experiment_id is None:
        configure_tracking(request.tracking_uri, request.experiment)
        experiment_id = mlflow.get_experiment_by_name(request.experiment).experiment_id
    tags = {"evaluates_run_id": linked} if linked else {}
    if linked and request.new_run:
        tags["mlflow.parentRunId"] = linked
    run = client.create_run(experiment_id, run_name="evaluation", tags=tags)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluation.evaluate", description=__doc__.split("\n\n")[0])
    clips = parser.add_argument_group("clips")
    clips.add_argument("--generated", default="", help="folder with clips and manifest.csv (file,target,category)")
    clips.add_argument("--model", default="", help="a model (folder or MLflow URI): generate first, log to its run")
    clips.add_argument("--per-class", type=int, default=40, help="with --model: clips per class (default 40)")
    clips.add_argument("--steps", type=int, help="with --model: denoising steps (default: the model's sample.steps)")
    clips.add_argument("--scheduler", choices=list(SAMPLERS), help="with --model: sampler (default: the model's)")
    clips.add_argument("--guidance-scale", type=float, help="with --model: classifier-free guidance (the model's)")
    clips.add_argument("--vocoder", help="with --model: griffin_lim, hifigan or a HiFi-GAN checkpoint (the model's)")
    clips.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", default=DEFAULT_SOURCE, help="ESC-50 folder or hub id (default esc50-mini)")
    parser.add_argument("--reference-folds", default="", help="comma-separated folds forming the reference (all)")
    parser.add_argument("--hub-split", default="train")
    parser.add_argument("--metrics", default=",".join(METRIC_GROUPS), help="any of fad,clap,esc (default: all)")
    parser.add_argument("--json", default="", help="write {metric: value} here too")
    parser.add_argument("--out", default="", help="folder for tables and figures (outputs/evaluation/NAME)")
    parser.add_argument("--no-real-row", action="store_true", help="skip scoring the real held-out clips")
    parser.add_argument(
        "--log-clips", type=int, default=2,
        help="scored clips per class kept in OUT/clips and logged to MLflow (default 2, 0 = none)",
    )  # fmt: skip
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument(
        "--allow-training-overlap", action="store_true",
        help="let the reference hold the generator's training clips (tagged, marked in the table)",
    )  # fmt: skip
    protocol.add_argument(
        "--trained-on-none", action="store_true",
        help="the clips come from a generator that heard none of --reference (no training record needed)",
    )  # fmt: skip
    protocol.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out the reference's bad rows and unreadable clips (data.skip_bad)",
    )
    protocol.add_argument("--bootstrap", type=int, default=1000, help="draws for the 95%% intervals (0 = none)")
    protocol.add_argument("--peak", type=float, default=EvalOptions.peak,
                          help="every clip peak-normalized to this before embedding (0 = as decoded; default: "
                               "0.9 for data.level=peak models, as decoded for data.level=fixed ones)")  # fmt: skip
    weights = parser.add_argument_group("models")
    weights.add_argument("--fad-model", default="vggish", choices=list(FAD_MODELS))
    weights.add_argument("--fad-sample-rate", type=int, default=0, help="0 = the FAD model's default")
    weights.add_argument("--ckpt-dir", default="", help=f"weights folder (default ${CKPT_DIR_ENV}, else torch hub's)")
    weights.add_argument("--allow-download", action="store_true", help="let the FAD package download weights")
    weights.add_argument("--clap-checkpoint", default="630k-audioset", help="name in --ckpt-dir or a .pt path")
    weights.add_argument("--clap-template", default=EvalOptions.clap_template)
    weights.add_argument("--device", default="", help="cpu, cuda... (default: CUDA when present)")
    weights.add_argument("--cache-dir", default=".cache/evaluation", help="reference embeddings, trained scorer")
    tracking = parser.add_argument_group("MLflow")
    tracking.add_argument("--no-mlflow", action="store_true")
    tracking.add_argument("--tracking-uri", default="", help="default: MLFLOW_TRACKING_URI, else ./mlflow.db")
    tracking.add_argument("--experiment", default="esc50-diffusion", help="for a new run")
    tracking.add_argument("--run-id", default="", help="log to this run instead of the model's")
    tracking.add_argument("--new-run", action="store_true", help="a new run linked to the model's run")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def parse_folds(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(f"--reference-folds '{text}' is not a comma-separated list of fold numbers") from None


@exit_on_user_error
def main(argv: list[str] | None = None) -> EvaluationOutcome:
    args = parse_args(argv)
    options = EvalOptions(
        fad_model=args.fad_model, fad_sample_rate=args.fad_sample_rate, ckpt_dir=args.ckpt_dir,
        allow_download=args.allow_download, clap_checkpoint=args.clap_checkpoint, clap_template=args.clap_template,
        hub_split=args.hub_split, device=args.device, allow_training_overlap=args.allow_training_overlap,
        trained_on=[] if args.trained_on_none else None, bootstrap=args.bootstrap, peak=args.peak,
        skip_bad=args.skip_bad,
    )  # fmt: skip
    request = EvaluationRequest(
        generated=args.generated, model=args.model, reference=args.reference or DEFAULT_SOURCE,
        reference_folds=parse_folds(args.reference_folds), metrics=parse_metric_groups(args.metrics), out=args.out,
        json=args.json, real_row=not args.no_real_row, log_clips=args.log_clips, cache_dir=args.cache_dir,
        mlflow=not args.no_mlflow,
        tracking_uri=args.tracking_uri, experiment=args.experiment, run_id=args.run_id, new_run=args.new_run,
        generation={"per_class": args.per_class, "steps": args.steps, "scheduler": args.scheduler, "seed": args.seed,
                    "guidance_scale": args.guidance_scale, **vocoder_choice(args.vocoder)},
        options=options,
    )  # fmt: skip
    return evaluate(request, show_progress=not args.no_progress)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
