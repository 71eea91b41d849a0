"""Train a class-conditional spectrogram diffusion model.

    accelerate launch --config_file accelerate_config.yaml -m training.train \
        --config configs/esc50_64.yaml train.loss=l1 model.attention=false

Reads top to bottom: data, model, optimizer, (resume), loop (noise, predict, loss, step, EMA,
log, sample, checkpoint), then the EMA model saved for generation.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader

from core.config import Config, config_hash, flatten, load_config, sample_seed, split_overrides, to_yaml
from core.diffusion.guidance import null_class
from core.diffusion.losses import diffusion_loss
from core.diffusion.model import DiffusionModel
from core.diffusion.network import build_unet
from core.diffusion.schedules import noise_schedule
from core.errors import UserError, exit_on_user_error
from core.esc50 import unsafe_class_name
from core.files import write_error_reason, write_text_atomic
from core.progress import Progress
from core.secrets import redact_uri
from core.spectrograms import (
    SpectrogramBatches,
    build_spectrogram_cache,
    data_classes,
    mel_settings,
    select_clips,
    skipped_rows,
    to_model_range,
    training_clips,
    training_record,
)
from core.tracking import (
    UNSENT_FILE,
    RunLogger,
    configure_tracking,
    fail_fast_requests,
    git_commit,
    one_line_error,
    replay_unsent,
    where_to_look,
)
from training.checkpoints import check_resume_target, complete_checkpoints, load_latest_checkpoint, save_checkpoint
from training.run_folder import (
    claim_output_dir,
    lock_output_dir,
    resume_changes,
    resumed_config,
    saved_config,
    unlock_output_dir,
)
from training.samples import write_class_samples
from training.signals import STOP

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    run_id: str
    step: int
    losses: dict[int, float]  # step -> loss (mean over processes) at each logging step


def recipe_loss(
    model: torch.nn.Module, schedule: DDPMScheduler, images: torch.Tensor, labels: torch.Tensor, config: Config
) -> torch.Tensor:
    """The configured objective, loss norm and weighting (core.diffusion.losses) for one batch."""
    unwrapped = model.module if hasattr(model, "module") else model
    train = config.train
    return diffusion_loss(
        model, schedule, images, labels, prediction=train.prediction, loss=train.loss,
        weighting=train.loss_weighting, min_snr_gamma=train.min_snr_gamma, class_dropout=config.model.class_dropout,
        null_label=null_class(unwrapped.config.num_class_embeds, config.model.class_dropout),
    )  # fmt: skip


def recipe_record(config: Config) -> dict:
    """What the model folder records of how it was trained (audio.json `recipe`)."""
    train = config.train
    keys = ("prediction", "loss", "loss_weighting", "min_snr_gamma", "beta_schedule", "zero_terminal_snr",
            "num_train_timesteps")  # fmt: skip
    return {**{key: getattr(train, key) for key in keys}, "class_dropout": config.model.class_dropout}


def sampling_defaults(config: Config) -> dict:
    """How the model's clips are made unless generation is told otherwise (audio.json `sampling`)."""
    sample = config.sample
    keys = ("scheduler", "steps", "guidance_scale", "vocoder", "griffin_lim_iters", "griffin_lim_momentum",
            "vocoder_path")  # fmt: skip
    return {key: getattr(sample, key) for key in keys}


def mixed_precision(config: Config) -> tuple[str, str]:
    """The precision to train in and where it comes from: train.mixed_precision when set (it wins, as an
    argument to `Accelerator` does in Accelerate), else what `accelerate launch` was given (its
    --mixed_precision or config file, passed as ACCELERATE_MIXED_PRECISION), else none."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "")
    configured = config.train.mixed_precision
    if configured:
        overridden = f", over accelerate launch's '{launched}'" if launched and launched != configured else ""
        return configured, f"train.mixed_precision{overridden}"
    if launched:
        return launched, "accelerate launch (train.mixed_precision is not set)"
    return "no", "default (neither train.mixed_precision nor accelerate launch set it)"


def make_accelerator(config: Config) -> Accelerator:
    # Without an accelerator device, Accelerate joins a torchrun process group only when told it
    # runs on CPU (it then uses gloo); with `accelerate launch --cpu` it is told the same way.
    no_device = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    precision, source = mixed_precision(config)
    accelerator = Accelerator(
        mixed_precision=precision, gradient_accumulation_steps=config.train.gradient_accumulation, cpu=no_device
    )
    if accelerator.is_main_process:
        log.info("mixed precision: %s (from %s)", precision, source)
    return accelerator


def check_data(config: Config, show_progress: bool = True) -> list[str]:
    """Before the output folder is claimed: the whole collection scanned (every problem at once, or the bad
    rows left out with data.skip_bad) and cached, and the class set it defines; returns the class names."""
    build_spectrogram_cache(config.data, show_progress=show_progress)  # the long first pass: with its bar
    categories = data_classes(config.data)
    unsafe = [name for name in categories if unsafe_class_name(name)]
    if unsafe:  # the model would be refused at load, and its clips' folders named by it
        raise UserError(
            f"data.source {config.data.source}: class name {unsafe[0]!r} cannot name a folder of generated clips "
            "(no /, \\, leading dot or control characters); rename it in esc50.csv's category column"
        )
    beyond = [c for c in config.train.sample_classes if c >= len(categories)]
    if beyond:  # listening samples only (no result depends on them): sample what exists, and say so
        fitting = [c for c in config.train.sample_classes if c < len(categories)] or list(
            range(min(5, len(categories)))
        )
        log.warning(
            "train.sample_classes: %s does not fit the %d classes of data.source; sampling %s",
            list(config.train.sample_classes), len(categories), fitting,
        )  # fmt: skip
        config.train.sample_classes = fitting
    return categories


def build_data(config: Config, accelerator: Accelerator) -> tuple[SpectrogramBatches, DataLoader, int, dict]:
    """Cached spectrograms (computed once, by the main process) streamed: this process's share, and the
    record of which clips they are (saved with the model, so evaluation never scores against them).

    Every process runs the same number of batches per epoch (DDP would hang otherwise).
    """
    with accelerator.main_process_first():
        table = build_spectrogram_cache(config.data, show_progress=accelerator.is_main_process)
    skipped = skipped_rows(table)
    table = select_clips(table, list(training_clips(config.data)["filename"]))
    world, batch_size = accelerator.num_processes, config.train.batch_size
    batches_per_epoch = (len(table) // world) // batch_size
    if batches_per_epoch == 0:
        raise UserError(
            f"train.batch_size {batch_size} x {world} process(es) exceeds the {len(table)} clips of data.source"
        )
    stream = SpectrogramBatches(
        table, batch_size, config.data.shuffle_buffer, config.seed, accelerator.process_index, world
    )
    # The stream batches; our own generator keeps DataLoader off the global RNG, which resume restores.
    loader = DataLoader(
        stream, batch_size=None, num_workers=config.train.dataloader_workers, generator=torch.Generator()
    )
    return stream, loader, batches_per_epoch, {**training_record(config.data, table["filename"]), "skipped": skipped}


def train(
    config: Config,
    resume: str | None = None,
    show_progress: bool = True,
    parent_run_id: str | None = None,
    run_tags: dict[str, str] | None = None,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train per `config`; `resume` is 'latest' or a checkpoint folder. Sweeps pass their parent run and tags.

    `stop_after_steps` ends the job early with a checkpoint and the EMA model as of that step (a
    time-limited cluster slot, an ASHA stage); the schedule still spans `train.max_steps`, and
    `--resume latest` continues where it stopped.
    """
    accelerator = make_accelerator(config)
    # Recorded as resolved (config.yaml, params): a resume under another launcher keeps the precision.
    config.train.mixed_precision = str(accelerator.mixed_precision)
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    changes: dict[str, tuple] = {}
    quick_eval = None
    started: dict = {}  # train_in_folder puts the MLflow run here once it exists
    if resume is not None:
        check_resume_target(resume)  # before any work
    try:
        if accelerator.is_main_process:
            # An unreachable tracking server fails here, before the output folder is claimed or any work starts.
            configure_tracking(config.tracking.tracking_uri, config.tracking.experiment)
            categories = check_data(config, show_progress)  # so does bad data: a corrected rerun finds it unclaimed
            if resume is not None:  # before the config is rewritten: a running job's folder stays untouched
                lock_output_dir(output_dir)
                saved = saved_config(output_dir)
                changes = resume_changes(saved, config) if saved is not None else {}  # refuses unsafe keys
                for key, (old, new) in changes.items():
                    print(f"resume changes {key}: {old!r} -> {new!r}", flush=True)
            if config.train.eval_every:  # and a reference that cannot serve the quick evaluation
                from training.quick_eval import QuickEvaluation

                quick_eval = QuickEvaluation(config, categories)
            claim_output_dir(output_dir, to_yaml(without_secrets(config)), resuming=resume is not None)
            lock_output_dir(output_dir)  # a fresh run, once its claim succeeded (a no-op when held already)
        accelerator.wait_for_everyone()
        return train_in_folder(
            accelerator, config, output_dir, resume, show_progress, parent_run_id, run_tags, stop_after_steps,
            changes, quick_eval, started,
        )  # fmt: skip
    except BaseException as error:  # the run this job started or continued never stays RUNNING
        end_run(started.get("run"), "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED", 15)
        raise
    finally:
        STOP.in_loop = False
        unlock_output_dir(output_dir)  # on errors too: a sweep may retry this trial in another live process


def train_in_folder(
    accelerator: Accelerator,
    config: Config,
    output_dir: Path,
    resume: str | None,
    show_progress: bool,
    parent_run_id: str | None,
    run_tags: dict[str, str] | None,
    stop_after_steps: int | None,
    changes: dict[str, tuple] | None = None,
    quick_eval=None,
    started: dict | None = None,
) -> TrainResult:
    """The body of `train`, in a folder this process has claimed and locked: data, model, loop, model."""
    stream, loader, batches_per_epoch, data_record = build_data(config, accelerator)
    world = accelerator.num_processes
    categories = data_classes(config.data)  # the data's class set: ESC-50's 50, or a collection's own

    # Model, EMA, optimizer, schedules.
    unet = build_unet(config.model, mel_settings(config.data).shape, num_classes=len(categories))
    ema = EMAModel(
        unet.parameters(), decay=config.train.ema_decay, use_ema_warmup=True, power=config.train.ema_power,
        model_cls=UNet2DModel, model_config=unet.config,
    )  # fmt: skip
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=config.train.learning_rate, weight_decay=config.train.weight_decay,
        betas=(config.train.adam_beta1, config.train.adam_beta2),
    )  # fmt: skip
    # A prepared scheduler steps once per process each step (diffusers examples scale likewise).
    lr_schedule = get_cosine_schedule_with_warmup(
        optimizer, config.train.warmup_steps * world, config.train.max_steps * world
    )
    noise_scheduler = noise_schedule(
        config.train.num_train_timesteps, config.train.beta_schedule, config.train.prediction,
        config.train.zero_terminal_snr,
    )  # fmt: skip
    # The loader is not prepared: the stream is already split per process, and Accelerate
    # would shard the stream a second time (accelerate #4075).
    model, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)

    step = load_latest_checkpoint(accelerator, output_dir, resume) if resume else 0
    written: set[int] = set()  # the checkpoints this job saved: the only ones its pruning may remove
    if step > config.train.max_steps:
        raise UserError(f"train.max_steps {config.train.max_steps} is below step {step}, which the run has reached")
    if resume and accelerator.is_main_process:  # the checkpoint fits: only now the config as resumed is written
        try:
            write_text_atomic(output_dir / "config.yaml", to_yaml(without_secrets(config)))
        except OSError as error:
            raise UserError(f"cannot write to output_dir {output_dir}: {error.strerror or error}") from None
    tags = {**(run_tags or {}), "train.processes": str(world)}  # the processes of this job, each on its own data
    run = start_run(config, output_dir, accelerator.is_main_process, parent_run_id, tags, data_record)
    if started is not None:
        started["run"] = run
    if run and not step and config.data.skip_bad:
        log_skipped_rows(run, data_record["skipped"], output_dir)
    if run and step:  # every resume leaves a mark in the run's history: where an interruption was picked up
        run.log_metrics({"train/resumed_from_step": step}, step)
        if changes:
            record_resume_changes(run, step, changes, output_dir)
    mel = mel_settings(config.data)

    # Resume exactly: the epoch and the position in it follow from the step count.
    micro_step = step * config.train.gradient_accumulation
    epoch, offset = divmod(micro_step, batches_per_epoch)
    losses: dict[int, float] = {}
    # A bar on a terminal; under --no-progress (logs, mlflow run) a line every 30 s: step, loss, samples/s, ETA.
    progress = Progress(
        config.train.max_steps, "training", show_progress, "step", initial=step, enabled=accelerator.is_main_process
    )
    window_start, window_samples = time.perf_counter(), 0
    last_step = min(config.train.max_steps, stop_after_steps or config.train.max_steps)
    model.train()
    STOP.in_loop = True  # a signal now stops after the step, checkpointed; elsewhere it interrupts at once
    while step < last_step:
        stream.set_epoch(epoch)
        for batch in itertools.islice(loader, offset, batches_per_epoch):
            images = to_model_range(batch["spectrogram"].to(accelerator.device)[:, None], config.data.normalize)
            labels = batch["target"].to(accelerator.device)
            with accelerator.accumulate(model):
                loss = recipe_loss(model, noise_scheduler, images, labels, config)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
                optimizer.step()
                lr_schedule.step()
                optimizer.zero_grad(set_to_none=True)
            window_samples += images.shape[0] * world
            if not accelerator.sync_gradients:
                continue
            ema.step(model.parameters())
            step += 1
            if stop_requested(accelerator):  # SIGTERM/SIGINT: this step is the last, as with --stop-after-steps
                last_step = step

            # Every log_every steps, and always at a checkpoint and at the last step of this job (a run shorter
            # than log_every, or stopped early, still has its loss).
            if step % config.train.log_every == 0 or step % config.train.checkpoint_every == 0 or step == last_step:
                mean_loss = accelerator.gather(loss.detach()[None]).mean().item()
                if not math.isfinite(mean_loss):  # stop before the bad weights reach a checkpoint
                    raise_diverged(run, step, mean_loss, output_dir)
                losses[step] = mean_loss
                elapsed = time.perf_counter() - window_start
                metrics = {
                    "train/loss": mean_loss,
                    "train/lr": lr_schedule.get_last_lr()[0],
                    "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                    "train/samples_per_sec": window_samples / max(elapsed, 1e-9),
                }
                window_start, window_samples = time.perf_counter(), 0
                progress.update(1, loss=mean_loss, samples_per_sec=metrics["train/samples_per_sec"])
                if run and step > run.logged_through:  # a step replayed after a crash is in the run already
                    run.log_metrics(metrics, step)
            else:
                progress.update(1)
            if config.train.sample_every and step % config.train.sample_every == 0 and step < config.train.max_steps:
                log_samples(accelerator, model, ema, noise_scheduler, mel, config, categories, run, step)
            if config.train.eval_every and step % config.train.eval_every == 0:
                log_quick_eval(accelerator, model, ema, noise_scheduler, mel, config, categories, run, step, quick_eval)
            if step % config.train.checkpoint_every == 0:
                save_checkpoint(accelerator, output_dir, step, config.train.checkpoints_keep, written)
            if step >= last_step:
                break
        epoch, offset = epoch + 1, 0
    STOP.in_loop = False
    progress.close()
    # The last step is checkpointed before the model is saved (checkpoint_every need not divide max_steps):
    # a failure below, or a stop here, then loses no step.
    if not any(folder.name == f"step_{step:06d}" for folder in complete_checkpoints(output_dir)):
        save_checkpoint(accelerator, output_dir, step, config.train.checkpoints_keep, written)

    # The EMA weights are the model: save them in diffusers format with the mel settings beside
    # (when stopping early too: a model as of this step, to sample from and score).
    model_dir = output_dir / "model"
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        with ema_weights(ema, final):
            diffusion = as_diffusion_model(
                final, noise_scheduler, mel, config, categories, run.run_id if run else "", data_record
            )
            save_model(diffusion, model_dir, step)
            if step == config.train.max_steps:
                samples = output_dir / "samples" / "final"
                classes = list(config.train.sample_classes)
                real = real_examples(stream.table, classes)
                write_class_samples(diffusion, classes, samples, config.sample, sample_seed(config), real)
    if step < config.train.max_steps:  # stopped early on request (checkpointed above): hand back
        return stop_early(accelerator, output_dir, step, run, losses)
    if accelerator.is_main_process:  # a tracking server failing now delays the end by deadline_seconds at most
        artifacts = {"samples/final": output_dir / "samples" / "final", "model": model_dir}
        end_run(run, "FINISHED", config.tracking.deadline_seconds, artifacts)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(output_dir, model_dir, run.run_id if run else "", step, losses)


def stop_requested(accelerator: Accelerator) -> bool:
    """Whether a signal asked to stop: every process asks every step (a collective call; a signal may reach one
    of them only, or each at another step), so all of them stop at the same step."""
    if accelerator.num_processes == 1:
        return STOP.signal is not None
    flag = torch.tensor([1.0 if STOP.signal is not None else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def save_model(diffusion: DiffusionModel, model_dir: Path, step: int) -> None:
    """The model folder written whole or not at all (a full disk leaves the previous one as it was)."""
    try:
        diffusion.save(model_dir)
    except Exception as error:  # OSError, or safetensors' SafetensorError wrapping one (disk full: os error 28)
        raise UserError(  # `train` ends the run FAILED
            f"cannot write the model to {model_dir} ({write_error_reason(error)}); step {step} is checkpointed: "
            "make room and run "
            "--resume latest to save it"
        ) from None


def end_run(run: RunLogger | None, status: str, deadline_seconds: float, artifacts: dict | None = None) -> None:
    """Send what is queued and the artifacts (MLflow path -> local folder), then the status, all within
    `deadline_seconds`; what the server did not take is kept beside the run and named in one warning line."""
    if run is None:
        return
    run.start_deadline(deadline_seconds)
    run.flush()
    for artifact_path, folder in (artifacts or {}).items():
        run.log_artifacts(folder, artifact_path)
    run.set_terminated(status)
    warning = run.save_unsent()
    if warning:
        log.warning("%s", warning)


def stop_early(accelerator: Accelerator, output_dir: Path, step: int, run, losses) -> TrainResult:
    end_run(run, "KILLED", 60)  # resumable: `--resume latest` sets it RUNNING again
    accelerator.end_training()
    return TrainResult(output_dir, output_dir / "model", run.run_id if run else "", step, losses)


def real_examples(table, classes: list[int]):
    """One training spectrogram of each class (the first in the table), for the real-beside-generated figure;
    None when a class has none among the training clips."""
    import numpy as np

    targets = np.asarray(table["target"])
    found = [np.flatnonzero(targets == c) for c in classes]
    if any(len(rows) == 0 for rows in found):
        return None
    return np.stack([np.asarray(table[int(rows[0])]["spectrogram"], dtype=np.float32) for rows in found])


def log_skipped_rows(run: RunLogger, rows: list[dict], output_dir: Path) -> None:
    """data.skip_bad: what was left out, as an artifact (data_skipped.csv) and a count (data/skipped_rows)."""
    import csv
    import io

    run.log_metrics({"data/skipped_rows": float(len(rows))}, 0)
    if rows:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["line", "file", "problem", "unreadable"])
        writer.writeheader()
        writer.writerows(rows)
        run.log_artifact(write_text_atomic(output_dir / "data_skipped.csv", text.getvalue()))


def as_diffusion_model(
    unet, noise_scheduler: DDPMScheduler, mel, config: Config, categories: list[str], run_id: str,
    data_record: dict | None = None,
) -> DiffusionModel:  # fmt: skip
    return DiffusionModel(
        unet=unet, noise_schedule=dict(noise_scheduler.config), mel=mel, normalize=config.data.normalize,
        categories=list(categories),
        null_class=null_class(unet.config.num_class_embeds, config.model.class_dropout), mlflow_run_id=run_id,
        sample_clip=config.sample.clip, training=data_record, recipe=recipe_record(config),
        sampling=sampling_defaults(config),
    )  # fmt: skip


@contextlib.contextmanager
def ema_weights(ema: EMAModel, unet: torch.nn.Module) -> Iterator[None]:
    """The EMA weights in `unet` for the block (to sample or save the model), the training weights after."""
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    try:
        yield
    finally:
        ema.restore(unet.parameters())


@contextlib.contextmanager
def ema_model(accelerator, model, ema, noise_scheduler, mel, config: Config, categories) -> Iterator[DiffusionModel]:
    """The EMA weights as a `DiffusionModel` in eval mode for the block; the training weights and mode after."""
    unet = accelerator.unwrap_model(model)
    with ema_weights(ema, unet):
        unet.eval()
        try:
            yield as_diffusion_model(unet, noise_scheduler, mel, config, categories, "")
        finally:
            unet.train()


def log_samples(accelerator, model, ema, noise_scheduler, mel, config: Config, categories, run, step: int) -> None:
    """Listenable progress: EMA weights swapped in, a few classes sampled, swapped back."""
    if accelerator.is_main_process:
        folder = Path(config.output_dir) / "samples" / f"step_{step:06d}"
        with ema_model(accelerator, model, ema, noise_scheduler, mel, config, categories) as diffusion:
            write_class_samples(
                diffusion, list(config.train.sample_classes), folder, config.sample, sample_seed(config)
            )
        if run:
            run.log_artifacts(folder, f"samples/step_{step:06d}")
    accelerator.wait_for_everyone()


def log_quick_eval(accelerator, model, ema, noise_scheduler, mel, config: Config, categories, run, step: int,
                   quick_eval) -> None:  # fmt: skip
    """train.eval_every: the EMA weights swapped in, a few clips per class scored (training.quick_eval), logged."""
    if accelerator.is_main_process and quick_eval is not None:
        with ema_model(accelerator, model, ema, noise_scheduler, mel, config, categories) as diffusion:
            metrics = quick_eval(diffusion, step)
        log.info("step %d quick evaluation: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
        if run and step > run.logged_through:
            run.log_metrics(metrics, step)
    accelerator.wait_for_everyone()


def record_resume_changes(run: RunLogger, step: int, changes: dict[str, tuple], output_dir: Path) -> None:
    """What a resume changed (safe keys only), in the run: a tag per resume and the config as resumed.
    MLflow params cannot change; they keep the first values, and the tag says what differs since `step`."""
    text = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
    run.set_tags({f"resume.step_{step:06d}": text})
    run.log_artifact(output_dir / "config.yaml", f"resumed/step_{step:06d}")


def run_name(config: Config, output_dir: Path) -> str:
    """The run's name in MLflow: tracking.run_name, else the output folder's name and the seed."""
    return config.tracking.run_name or f"{output_dir.name} seed={config.seed}"


def start_run(
    config: Config, output_dir: Path, is_main: bool, parent_run_id: str | None, run_tags: dict[str, str] | None,
    data_record: dict | None = None,
) -> RunLogger | None:  # fmt: skip
    """One MLflow run per training job; a resumed job continues the run recorded in run.json.

    Recorded: the config as params, MLflow's own source tags (`mlflow.source.*`, git commit, user), the training
    clips as the run's input data set (source, clip count, digest), and a readable run name."""
    if not is_main:
        return None
    import mlflow

    try:  # the server passed the start check; a few quick tries each, then one line (never minutes of retries)
        with fail_fast_requests(15, retries=2):
            return open_run(config, output_dir, parent_run_id, run_tags, data_record)
    except UserError:
        raise  # already one line (an unsent file that cannot be read, say)
    except Exception as error:
        if not (output_dir / "run.json").is_file():  # a fresh run: the folder is released for a rerun
            (output_dir / "config.yaml").unlink(missing_ok=True)
        raise UserError(
            f"MLflow at {redact_uri(mlflow.get_tracking_uri())} could not start the run: {one_line_error(error)[:200]}"
        ) from None


def open_run(
    config: Config, output_dir: Path, parent_run_id: str | None, run_tags: dict[str, str] | None,
    data_record: dict | None,
) -> RunLogger:  # fmt: skip
    import mlflow
    from mlflow.tracking.context.registry import resolve_tags

    client = mlflow.tracking.MlflowClient()  # `train` has pointed MLflow at the store and experiment
    record = output_dir / "run.json"
    unsent = output_dir / UNSENT_FILE
    if record.is_file():  # a resumed job continues its own run
        run_id = json.loads(record.read_text())["mlflow_run_id"]
        if unsent.is_file():  # what an earlier job could not send goes first, in order
            log.info("%s", replay_unsent(unsent))
        client.update_run(run_id, status="RUNNING")
        if run_tags and "train.processes" in run_tags:  # a resume may run on another number of processes
            client.set_tag(run_id, "train.processes", run_tags["train.processes"])
        logger = RunLogger(run_id, unsent_file=unsent)
        # Steps trained after the last checkpoint of a crashed job were logged; replayed, they are not again.
        history = client.get_metric_history(run_id, "train/loss")
        logger.logged_through = max((metric.step for metric in history), default=0)
        return logger
    name = run_name(config, output_dir)
    tags = resolve_tags()  # MLflow's own context: mlflow.source.name/type/git.commit, mlflow.user
    tags.setdefault("mlflow.source.git.commit", git_commit())
    # `mlflow run` creates the run (with its own source tags) and passes its id; otherwise we create one.
    run_id = os.environ.pop("MLFLOW_RUN_ID", "") if not parent_run_id else ""
    if run_id:
        tags = {"mlflow.runName": name}  # `mlflow run` gave it a random name
    else:
        experiment = mlflow.get_experiment_by_name(config.tracking.experiment)
        run_id = client.create_run(experiment.experiment_id, run_name=name).info.run_id
    tags.update({"git_commit": git_commit(), "config_hash": config_hash(config),
                 "output_dir": str(output_dir.resolve())})  # fmt: skip
    tags.update(run_tags or {})
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    recorded = {**flatten(without_secrets(config)), "sample.seed_resolved": sample_seed(config)}
    params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in recorded.items()]
    try:
        client.log_batch(run_id, params=params, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])
        client.log_artifact(run_id, str(output_dir / "config.yaml"))
        if data_record:
            log_training_data_once(client, run_id, config, data_record)
        write_text_atomic(record, json.dumps({"mlflow_run_id": run_id}))
    except BaseException:
        with contextlib.suppress(Exception):  # a run that never trained does not stay RUNNING
            client.set_terminated(run_id, "FAILED")
        raise
    return RunLogger(run_id, unsent_file=unsent)


def log_training_data_once(client, run_id: str, config: Config, data_record: dict) -> None:
    """`log_training_data`, tolerant of runs started at once: MLflow's SQL store creates a data set on first use,
    and two runs of one sweep logging the same clips race on its unique key. The second try finds it made; the
    run's training goes on without the link, said in a warning, if that fails too (the clips are in audio.json)."""
    for attempt in range(2):
        try:
            return log_training_data(client, run_id, config, data_record)
        except Exception as error:  # mlflow's RestException / MlflowException wrapping an IntegrityError
            if attempt:
                log.warning("the training clips were not logged as the run's input data set (%s); they are "
                            "listed in the model's audio.json", one_line_error(error)[:160])  # fmt: skip
            else:
                time.sleep(0.5)


def log_training_data(client, run_id: str, config: Config, data_record: dict) -> None:
    """The training clips as the run's input (MLflow's Datasets panel): source, the clip list, its digest."""
    import pandas as pd
    from mlflow.data import from_pandas
    from mlflow.entities import DatasetInput, InputTag

    clips = pd.DataFrame({"filename": data_record["filenames"]})
    source = redact_uri(str(data_record.get("source") or config.data.source))
    with warnings.catch_warnings():  # a folder "can be interpreted in multiple ways" (two local source types)
        warnings.simplefilter("ignore", UserWarning)
        dataset = from_pandas(clips, source=source, name=Path(config.data.source).name or "data",
                              digest=str(data_record.get("digest", ""))[:36] or None)  # fmt: skip
    context = InputTag(key="mlflow.data.context", value="training")
    client.log_inputs(run_id, [DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[context])])


def without_secrets(config: Config) -> Config:
    """The config as recorded (config.yaml, MLflow params): credentials in the tracking URI redacted."""
    tracking = dataclasses.replace(config.tracking, tracking_uri=redact_uri(config.tracking.tracking_uri))
    return dataclasses.replace(config, tracking=tracking)


def raise_diverged(run: RunLogger | None, step: int, value: float, output_dir: Path) -> None:
    if run:
        run.flush(deadline_seconds=10)
        run.set_terminated("FAILED")
    kept = complete_checkpoints(output_dir)
    last = f"; the last good checkpoint is {kept[-1]}" if kept else ""
    raise UserError(f"loss became {value} at step {step} (try a lower train.learning_rate){last}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a class-conditional diffusion model on ESC-50 log-mel spectrograms.",
        epilog="Example: accelerate launch -m training.train --config configs/tiny.yaml train.max_steps=50",
    )
    parser.add_argument("--config", help="YAML config file (defaults apply to what it leaves out)")
    parser.add_argument(
        "--resume", help="'latest' to continue from the newest checkpoint of output_dir, or a checkpoint folder"
    )
    parser.add_argument(
        "--stop-after-steps",
        type=int,
        help="checkpoint, save the EMA model as of this step, and stop (resume later with --resume latest)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.loss=l1 model.attention=false")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        STOP.install()
        run_command(args)
    except KeyboardInterrupt:
        STOP.in_loop = False
        print(f"interrupted ({STOP.name or 'SIGINT'}) outside the training loop: stopped at once; the newest "
              "checkpoint is kept (--resume latest continues from it)", file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(128 + (STOP.signal or signal.SIGINT)) from None


def run_command(args: argparse.Namespace) -> None:
    overrides = split_overrides(args.overrides)
    config = load_config(args.config, overrides)
    if args.resume:  # the run continues as it was started: its saved config, with only safe keys changed
        config = resumed_config(config, overrides, args.config)
    elif not config.tracking.run_name:
        config.tracking.run_name = command_run_name(args.config, overrides, config.seed)
    result = train(
        config, resume=args.resume, show_progress=not args.no_progress, stop_after_steps=args.stop_after_steps
    )
    if result.step < config.train.max_steps:
        why = STOP.name or "--stop-after-steps"
        print(f"stopped early at step {result.step} of {config.train.max_steps} ({why}); continue with:\n"
              f"  python -m training.train output_dir={result.output_dir} --resume latest")  # fmt: skip
    print(f"output: {result.output_dir.resolve()} (model: {result.model_dir.resolve()})")
    if result.run_id:
        print(where_to_look(result.run_id))
    if STOP.signal is not None:
        raise SystemExit(128 + STOP.signal)  # stopped by a signal: its conventional exit status


# Keys that say where, not what: left out of the run's name.
_LOCATION_KEYS = ("output_dir", "data.source", "data.cache_dir", "train.eval_cache_dir", "tracking.")


def command_run_name(config_file: str | None, overrides: list[str], seed: int) -> str:
    """`tiny train.loss=l1 model.attention=false seed=0`: the config's name, what the command changed, the seed."""
    changed = [item for item in overrides if not item.split("=", 1)[0].startswith(_LOCATION_KEYS)]
    changed = [item for item in changed if not item.startswith("seed=")]
    name = " ".join([Path(config_file).stem if config_file else "defaults", *changed, f"seed={seed}"])
    return name if len(name) <= 250 else name[:247] + "..."


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
