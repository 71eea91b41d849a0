"""The one config object: dataclasses, loaded from YAML with dotted command-line overrides.

OmegaConf does the parsing and type checking (unknown keys and wrong types are rejected);
`validate` adds the checks a type cannot express (a loss name, a power of two, ...).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.errors import UserError

# The study's default data source sits beside the project (see README); users point
# `data.source` at the full ESC-50 folder or a hub dataset id.
DEFAULT_SOURCE = str(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "esc50-mini")


@dataclass
class DataConfig:
    source: str = DEFAULT_SOURCE  # ESC-50 folder (audio/ + meta/esc50.csv) or a hub dataset id
    hub_split: str = "train"  # split to read when `source` is a hub dataset id
    folds: list[int] = field(default_factory=list)  # folds to train on; empty = every fold
    # Per class, the last N recordings (every take) are kept out of training, for evaluation: the real
    # clips a model never heard, when the folds cannot provide them (esc50-mini is nearly all fold 4).
    holdout_recordings: int = 0
    sample_rate: int = 22050
    clip_seconds: float = 5.0
    resolution: int = 64  # mel bins = time frames = resolution; the frames span the whole clip
    # Mel bins and frames apart (0 = resolution): the UNet takes (mel_bins, frames), the hop makes the frames
    # span the whole clip, and n_fft=0 means 4 hops (to the nearest power of two) instead of resolution's rule.
    mel_bins: int = 0
    frames: int = 0
    n_fft: int = 0  # 0 = resolution only: the smallest power of two >= 2 hops (and >= 1024); else 4 hops
    level: str = "peak"  # peak: each clip's loudest bin is 0 dB; fixed: one reference, loudness stays in the data
    preset: str = ""  # audioldm: AudioLDM's mel settings (16 kHz, 64 bins, n_fft 1024, hop 160, 0-8 kHz, ln)
    top_db: float = 80.0
    normalize: bool = True  # True: [-1, 1] (diffusers/Palette); False: [0, 1] (the ablation)
    cache_dir: str = ".cache/spectrograms"
    shuffle_buffer: int = 1000
    preprocess_workers: int = 0  # 0 = one per CPU core
    # A collection with problems (absent files, bad rows, unreadable clips: one scan lists them all) stops the
    # run; true leaves those rows out instead (logged to MLflow: data_skipped.csv and data/skipped_rows).
    skip_bad: bool = False


@dataclass
class ModelConfig:
    block_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256])
    layers_per_block: int = 2
    attention: bool = True  # False removes every attention block, the mid-block's included
    attention_levels: int = 2  # how many of the lowest-resolution levels get attention
    attention_head_dim: int = 8
    norm_groups: int = 32
    dropout: float = 0.0
    class_dropout: float = 0.0  # > 0 trains a null class for classifier-free guidance


@dataclass
class TrainConfig:
    # The recipe (core/diffusion/): what the network predicts, the loss norm and its weighting, the schedule.
    prediction: str = "epsilon"  # epsilon | v_prediction | sample (core.diffusion.objectives)
    loss: str = "l2"  # l1 | l2 (core.diffusion.losses)
    loss_weighting: str = "none"  # none | min_snr (Hang et al. 2023)
    min_snr_gamma: float = 5.0  # min_snr: the SNR above which timesteps stop gaining weight
    max_steps: int = 20000
    batch_size: int = 16  # per process
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 500
    weight_decay: float = 1e-6
    adam_beta1: float = 0.95
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    # no | fp16 | bf16; "" = as launched (accelerate launch --mixed_precision or its config file, else no).
    # Set here it wins over the launcher, and training prints which one it used.
    mixed_precision: str = ""
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # linear | scaled_linear | squaredcos_cap_v2 (core.diffusion.schedules)
    zero_terminal_snr: bool = False  # rescale betas so the last timestep is pure noise (Lin et al. 2024)
    ema_decay: float = 0.9999
    ema_power: float = 0.75
    checkpoint_every: int = 1000
    checkpoints_keep: int = 3
    log_every: int = 10
    sample_every: int = 0  # 0 = only at the end
    # > 0: every N steps, eval_per_class clips of each evaluated class scored by the offline scorer (quick_eval/*
    # metrics against the step; training.quick_eval). The scorer is fitted once, cached in eval_cache_dir.
    eval_every: int = 0
    eval_per_class: int = 2
    eval_cache_dir: str = ".cache/evaluation"
    sample_classes: list[int] = field(default_factory=lambda: [0, 10, 20, 30, 40])
    dataloader_workers: int = 0


@dataclass
class SampleConfig:
    scheduler: str = "ddim"  # ddpm | ddim | dpmpp_2m | unipc | euler (core.diffusion.samplers)
    steps: int = 50
    guidance_scale: float = 1.0  # 1.0 = plain conditional sampling, as in the study
    batch_size: int = 32
    vocoder: str = "griffin_lim"  # griffin_lim | hifigan (core.vocoders)
    griffin_lim_iters: int = 32
    griffin_lim_momentum: float = 0.99  # fast Griffin-Lim (Perraudin et al. 2013), torchaudio's default; 0 = plain
    vocoder_path: str = ""  # hifigan: a local checkpoint folder, or a hub id already in the Hugging Face cache
    # How the sampler clips its estimate of the clean spectrogram at each step: `data_range` ([-1, 1]
    # with data.normalize, [0, 1] without, the same way in both modes), `legacy` (diffusers' own clip to
    # [-1, 1] whatever the range: how models saved before this key existed sample) or `none` (only the
    # final clamp). With DDPM, data_range and legacy agree on normalized models; DDIM's own clip keeps the
    # unclipped noise for its direction term, data_range re-derives it from the clipped x0.
    clip: str = "data_range"
    seed: int = -1  # generation seed of training's samples and of sweeps' clips; -1 = derived from `seed`


@dataclass
class TrackingConfig:
    experiment: str = "esc50-diffusion"
    run_name: str = ""
    # Empty: MLFLOW_TRACKING_URI if set, else MLflow's own default (./mlflow.db).
    tracking_uri: str = ""
    # After training, every MLflow call together (metrics still queued, artifacts, the status) ends within
    # this many seconds; what is not sent by then is kept in OUTPUT_DIR/mlflow_unsent.json to replay.
    deadline_seconds: float = 300.0


@dataclass
class Config:
    seed: int = 0
    output_dir: str = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- dotted overrides (`train.loss=l1`), then validated."""
    merged = OmegaConf.structured(Config)
    try:
        if path is not None:
            if not Path(path).is_file():
                raise UserError(f"config file not found: {path}")
            try:
                merged = OmegaConf.merge(merged, OmegaConf.load(path))
            except yaml.YAMLError as error:
                raise UserError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
            except (TypeError, ValueError) as error:  # OmegaConf: e.g. a mapping where a list belongs
                raise UserError(f"config file {path} does not fit the config: {error}") from None
        if overrides:
            _check_override_syntax(overrides)
            for item in overrides:  # one at a time, so that a value YAML cannot read is named
                try:
                    merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
                except yaml.YAMLError as error:
                    reason = str(error).splitlines()[0]
                    raise UserError(
                        f"override '{item.encode('unicode_escape').decode()}' is not valid YAML: {reason}"
                    ) from None
                except (TypeError, ValueError) as error:  # OmegaConf: e.g. a mapping where a list belongs
                    key = item.split("=", 1)[0].encode("unicode_escape").decode()
                    raise UserError(f"invalid config key '{key}': {str(error).splitlines()[0]}") from None
        _apply_preset(merged)  # from the YAML or an override
        if OmegaConf.is_missing(merged, "output_dir"):
            raise UserError("config key 'output_dir' is required (set it in the YAML or as output_dir=DIR)")
        config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
        OmegaConf.structured(config)  # list elements' types are checked only here ([{}] passes to_object)
    except OmegaConfBaseException as error:
        raise UserError(_describe_omegaconf_error(error, path)) from None
    if config.train.mixed_precision in ("False", "false"):  # YAML reads a bare `no` as false
        config.train.mixed_precision = "no"
    validate(config)
    return config


# data.preset: mel settings fixed by a vocoder's checkpoint (the hop, band and log scale are not config keys).
PRESETS = {
    "audioldm": {"sample_rate": 16000, "mel_bins": 64, "n_fft": 1024, "level": "fixed"},
}
PRESET_FRAMES = {"audioldm": 512}  # the default when data.frames is not set: 512 x 160 samples = 5.12 s
PRESET_MEL = {"audioldm": {"hop": 160, "f_min": 0.0, "f_max": 8000.0, "scale": "ln"}}


def _apply_preset(merged) -> None:
    """Set a preset's data keys; one the user set to something else is refused, naming both."""
    preset = merged.data.preset
    if not preset:
        return
    if preset not in PRESETS:
        raise UserError(f"invalid config key 'data.preset': '{preset}' is not one of {', '.join(PRESETS)}")
    defaults = DataConfig()
    for key, value in PRESETS[preset].items():
        given = merged.data[key]
        if given != getattr(defaults, key) and given != value:
            raise UserError(
                f"invalid config key 'data.{key}': data.preset={preset} needs {value} (its vocoder's checkpoint "
                f"was trained on it), not {given}"
            )
        merged.data[key] = value
    merged.data.frames = merged.data.frames or PRESET_FRAMES[preset]


def split_overrides(arguments: list[str]) -> list[str]:
    """Dotted overrides from the command line, the way every entry point reads them: `mlflow run -P
    overrides="a=1 b=2"` passes them all as one argument, split here as a shell would (quotes kept)."""
    import re
    import shlex

    key = re.compile(r"^[A-Za-z_][\w.]*=")
    items = []
    for argument in arguments:
        try:
            parts = shlex.split(argument)
        except ValueError:  # unbalanced quotes: a single value (YAML reads it or names it)
            parts = [argument]
        # Split only what is several overrides: a value with spaces ("sweep.asha={stages: [1]}") stays whole.
        items.extend(parts if len(parts) > 1 and all(key.match(part) for part in parts) else [argument])
    return items


def _check_override_syntax(overrides: list[str]) -> None:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(f"override '{item}' is not of the form key=value")


def _describe_omegaconf_error(error: OmegaConfBaseException, path: Any) -> str:
    key = getattr(error, "full_key", None) or "?"
    where = f" in {path}" if path else ""
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"invalid config key '{key}'{where}: {first_line}"


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise UserError(f"invalid config key '{key}': {message}")


def validate(config: Config) -> None:
    """Checks that types cannot express; each error names its key."""
    data, model, train, sample = config.data, config.model, config.train, config.sample
    _validate_recipe(train, sample)
    for key, value in flatten(config).items():
        if isinstance(value, float):
            _require(math.isfinite(value), key, f"{value} is not a finite number")
    _require(data.sample_rate >= 4000, "data.sample_rate", f"{data.sample_rate} Hz is too low")
    _require(data.clip_seconds > 0, "data.clip_seconds", "must be positive")
    levels = len(model.block_channels)
    _require(levels >= 1, "model.block_channels", "needs at least one level")
    _require(
        data.resolution >= 8 and data.resolution & (data.resolution - 1) == 0,
        "data.resolution",
        f"{data.resolution} is not a power of two >= 8 (the UNet halves it per level)",
    )
    _require(
        data.resolution >> (levels - 1) >= 2,
        "data.resolution",
        f"{data.resolution} is too small for {levels} UNet levels",
    )
    _require(data.n_fft == 0 or data.n_fft >= 16, "data.n_fft", "must be 0 (automatic) or >= 16")
    _validate_representation(config)
    _require(data.top_db > 0, "data.top_db", "must be positive")
    _require(data.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1")
    _require(all(1 <= f <= 5 for f in data.folds), "data.folds", "ESC-50 folds are 1..5")
    _require(all(c > 0 for c in model.block_channels), "model.block_channels", "must be positive")
    _require(model.norm_groups >= 1, "model.norm_groups", "must be >= 1")
    _require(
        all(c % model.norm_groups == 0 for c in model.block_channels),
        "model.norm_groups",
        f"{model.norm_groups} must divide every entry of model.block_channels {model.block_channels}",
    )
    _require(model.layers_per_block >= 1, "model.layers_per_block", "must be >= 1")
    _require(0 <= model.attention_levels <= levels, "model.attention_levels", f"must be in 0..{levels}")
    _require(0.0 <= model.class_dropout < 1.0, "model.class_dropout", "must be in [0, 1)")
    _require(
        sample.guidance_scale == 1.0 or model.class_dropout > 0,
        "sample.guidance_scale",
        "guidance needs a null class: train with model.class_dropout > 0 (e.g. 0.1)",
    )
    _require(
        train.mixed_precision in ("", "no", "fp16", "bf16"),
        "train.mixed_precision",
        f"'{train.mixed_precision}' is not one of no, fp16, bf16 (or empty: as launched)",
    )
    for key in ("max_steps", "batch_size", "gradient_accumulation", "checkpoint_every", "log_every"):
        _require(getattr(train, key) >= 1, f"train.{key}", "must be >= 1")
    _require(train.checkpoints_keep >= 1, "train.checkpoints_keep", "must be >= 1")
    _require(train.sample_every >= 0, "train.sample_every", "must be >= 0")
    _require(train.eval_every >= 0, "train.eval_every", "must be >= 0")
    _require(train.eval_per_class >= 1, "train.eval_per_class", "must be >= 1")
    _require(train.learning_rate > 0, "train.learning_rate", "must be positive")
    _require(train.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
    _require(0 < train.ema_decay < 1, "train.ema_decay", "must be in (0, 1)")
    _require(train.num_train_timesteps >= 2, "train.num_train_timesteps", "must be >= 2")
    # Against the data's own class count when training starts (the class set comes from the data).
    _require(all(c >= 0 for c in train.sample_classes), "train.sample_classes", "class ids are >= 0")
    _require(sample.steps >= 1, "sample.steps", "must be >= 1")
    _require(sample.batch_size >= 1, "sample.batch_size", "must be >= 1")
    _require(sample.griffin_lim_iters >= 1, "sample.griffin_lim_iters", "must be >= 1")
    _require(sample.seed >= -1, "sample.seed", "must be >= 0, or -1 (derived from seed)")
    _require(data.holdout_recordings >= 0, "data.holdout_recordings", "must be >= 0")


def _validate_representation(config: Config) -> None:
    """Mel settings that the UNet can take and a vocoder can invert, checked before any work."""
    from core.audio import LEVELS
    from core.spectrograms import mel_settings
    from core.vocoders import VOCODERS

    data, sample = config.data, config.sample
    halvings = len(config.model.block_channels) - 1
    for key in ("mel_bins", "frames"):
        value = getattr(data, key)
        _require(value >= 0, f"data.{key}", "must be >= 0 (0 = data.resolution)")
        _require(
            value == 0 or (value % (1 << halvings) == 0 and value >> halvings >= 2),
            f"data.{key}",
            f"{value} does not fit the UNet: {len(config.model.block_channels)} levels halve it {halvings} times, "
            f"so it must be a multiple of {1 << halvings} and at least {2 << halvings}",
        )
    _one_of(data.level, LEVELS, "data.level")
    mel = mel_settings(data)
    _require(
        mel.window_length >= mel.hop_length,
        "data.n_fft",
        f"{mel.window_length} is shorter than the hop ({mel.hop_length} samples): frames would skip audio and no "
        "vocoder could invert them",
    )
    _one_of(sample.vocoder, VOCODERS, "sample.vocoder")
    VOCODERS[sample.vocoder].check_settings(mel, "sample.vocoder")
    if sample.vocoder == "hifigan":  # training voices its samples at the end: a missing checkpoint fails now
        VOCODERS[sample.vocoder].check_path(sample.vocoder_path, mel, "sample.vocoder_path")
    _require(0.0 <= sample.griffin_lim_momentum < 1.0, "sample.griffin_lim_momentum", "must be in [0, 1)")


def _one_of(value: str, choices, key: str) -> None:
    _require(value in choices, key, f"'{value}' is not one of {', '.join(choices)}")


def _validate_recipe(train: TrainConfig, sample: SampleConfig) -> None:
    """The recipe's keys against the registries of core/diffusion (the modules that define each choice)."""
    from core.diffusion.losses import LOSS_NORMS, LOSS_WEIGHTINGS
    from core.diffusion.objectives import OBJECTIVES
    from core.diffusion.samplers import SAMPLE_CLIPS, SAMPLERS
    from core.diffusion.schedules import BETA_SCHEDULES

    _one_of(train.prediction, OBJECTIVES, "train.prediction")
    _one_of(train.loss, LOSS_NORMS, "train.loss")
    _one_of(train.loss_weighting, LOSS_WEIGHTINGS, "train.loss_weighting")
    _require(train.min_snr_gamma > 0, "train.min_snr_gamma", "must be positive")
    _one_of(train.beta_schedule, BETA_SCHEDULES, "train.beta_schedule")
    _require(
        not (train.zero_terminal_snr and train.prediction == "epsilon"),
        "train.zero_terminal_snr",
        "the last timestep is pure noise, from which epsilon cannot be predicted: set train.prediction to "
        "v_prediction (Lin et al. 2024) or sample",
    )
    _one_of(sample.scheduler, SAMPLERS, "sample.scheduler")
    _one_of(sample.clip, SAMPLE_CLIPS, "sample.clip")


def sample_seed(config: Config) -> int:
    """The generation seed: `sample.seed`, or one derived from the training seed (never equal to it)."""
    return config.sample.seed if config.sample.seed >= 0 else 1_000_003 + config.seed


def to_dict(config: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def flatten(config: Config) -> dict[str, Any]:
    """`{"train.loss": "l2", ...}`: the form MLflow params and sweep axes use."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node

    walk("", to_dict(config))
    return flat


def config_hash(config: Config, exclude: tuple[str, ...] = ("output_dir", "tracking.run_name")) -> str:
    """A short stable hash of everything that changes the result (not where it is written)."""
    items = {k: v for k, v in flatten(config).items() if k not in exclude}
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:12]
