"""The output folder of one training job: claimed once, never silently shared by two runs."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import IO

from core.config import Config, flatten, load_config
from core.errors import UserError
from core.files import lock_folder, write_text_atomic

log = logging.getLogger(__name__)
LOCK_FILE = ".running.lock"
_held_locks: dict[str, IO[str]] = {}  # folder -> the open lock file this process holds


def claim_output_dir(output_dir: Path, config_yaml: str, resuming: bool) -> None:
    """Create `output_dir` and write the resolved config into it, atomically.

    A folder that already holds a run is refused unless the job resumes it: two runs writing one
    folder would interleave checkpoints and overwrite each other's model.
    """
    config_file = output_dir / "config.yaml"
    if config_file.exists() and not resuming:
        raise UserError(
            f"output_dir {output_dir} already holds a run ({config_file}); "
            "pass --resume latest to continue it, or choose another output_dir"
        )
    try:
        if resuming:  # a run's config.yaml is rewritten by training once its checkpoint has loaded
            if not config_file.exists():
                write_text_atomic(config_file, config_yaml)
        else:
            output_dir.mkdir(parents=True, exist_ok=True)
            temporary = output_dir / f".config.yaml.{os.getpid()}.tmp"
            temporary.write_text(config_yaml)
            _claim_exclusively(temporary, config_file, output_dir)
    except OSError as error:
        raise UserError(f"cannot write to output_dir {output_dir}: {error.strerror or error}") from None


def _claim_exclusively(temporary: Path, config_file: Path, output_dir: Path) -> None:
    """Put the config in place only if none is there, atomically: of two runs started at once, one wins."""
    try:
        os.link(temporary, config_file)  # fails if config_file exists, unlike os.replace
    except FileExistsError:
        raise UserError(
            f"output_dir {output_dir} already holds a run ({config_file}); "
            "pass --resume latest to continue it, or choose another output_dir"
        ) from None
    finally:
        temporary.unlink(missing_ok=True)


def lock_output_dir(output_dir: Path) -> None:
    """Hold an exclusive lock on `output_dir` while this process trains in it.

    The claim above stops a second fresh run; this stops a second job resuming a folder whose run is
    still going (two `--resume latest` at once would interleave checkpoints). The kernel drops a
    flock when its process dies, kill -9 included, so a crashed run never leaves the folder locked.
    Locking again in the same process is a no-op (`train` locks before and after its claim). Where
    flock does not exist (Windows) or is not shared (some network file systems) nothing is locked.
    """
    key = str(output_dir.resolve())
    if key in _held_locks:
        return
    handle = lock_folder(
        output_dir,
        LOCK_FILE,
        "a running job",
        advice="wait for it to end or stop it before resuming",
        called="output_dir ",
    )
    if handle is not None:
        _held_locks[key] = handle


def unlock_output_dir(output_dir: Path) -> None:
    handle = _held_locks.pop(str(output_dir.resolve()), None)
    if handle is not None:
        handle.close()


# What a resumed run may change: how long it trains and how it reports. Everything else (data, model, recipe,
# optimizer, precision, seed) decides what the checkpoints hold and stays as the run was started.
# `train.max_steps` extends (or shortens) the run: the cosine LR schedule is stretched to the new length
# from the resumed step on, so the learning rate continues on the longer curve.
RESUME_SAFE_KEYS = (
    "train.max_steps", "train.log_every", "train.checkpoint_every", "train.checkpoints_keep", "train.sample_every",
    "train.sample_classes", "train.eval_every", "train.eval_per_class", "train.dataloader_workers",
    # where caches are and how hard to work on them (another node's paths), how long MLflow may take at the end
    "data.cache_dir", "data.preprocess_workers", "train.eval_cache_dir", "tracking.deadline_seconds",
)  # fmt: skip
# Where the run is, not what it is: the saved tracking URI unless the command gives one (or the saved one had its
# credentials redacted: then this command's, or $MLFLOW_TRACKING_URI); output_dir is the command's.
RESUME_LOCATION_KEYS = ("output_dir", "tracking.tracking_uri")
_NOT_WORTH_SAYING = ("tracking.run_name",)  # named from the first command line; a resume keeps it


def saved_config(output_dir: Path) -> Config | None:
    """The config a run in `output_dir` was started with (its config.yaml), None when it has none."""
    path = Path(output_dir) / "config.yaml"
    return load_config(path) if path.is_file() else None


def resume_changes(saved: Config, config: Config) -> dict[str, tuple]:
    """`{key: (saved value, new value)}` for the safe keys `config` changes; a change of any other key is
    refused, naming it (exit 2): a run resumed on other data or another model would not be that run."""
    old, new = flatten(saved), flatten(config)
    changed = {key: (old.get(key), value) for key, value in new.items()
               if key not in RESUME_LOCATION_KEYS and old.get(key) != value}  # fmt: skip
    unsafe = [key for key in changed if key not in RESUME_SAFE_KEYS]
    if unsafe:
        key = unsafe[0]
        raise UserError(
            f"--resume cannot change {key} ({changed[key][0]!r} -> {changed[key][1]!r}"
            f"{f', and {len(unsafe) - 1} more key(s)' if len(unsafe) > 1 else ''}): the checkpoints were trained "
            f"with the first; only {', '.join(RESUME_SAFE_KEYS)} may change on resume"
        )
    return changed


def resumed_config(config: Config, overrides: list[str], config_file: str | None) -> Config:
    """For `--resume`: the run's saved config with the command line's dotted overrides on top (checked by
    `resume_changes` when training starts); the --config file's other values are not applied, and said so."""
    output_dir = Path(config.output_dir)
    saved = saved_config(output_dir)
    if saved is None:
        return config  # nothing was started there yet: a resume of nothing is a new run
    resumed = load_config(output_dir / "config.yaml", overrides)
    given = {item.split("=", 1)[0] for item in overrides}
    uri = resumed.tracking.tracking_uri
    if "tracking.tracking_uri" in given or "***" in uri:
        uri = config.tracking.tracking_uri
    tracking = dataclasses.replace(resumed.tracking, tracking_uri=uri)
    resumed = dataclasses.replace(resumed, output_dir=config.output_dir, tracking=tracking)
    if config_file:
        kept = flatten(resumed)
        ignored = [key for key, value in flatten(config).items()
                   if key not in given and key not in RESUME_LOCATION_KEYS + _NOT_WORTH_SAYING
                   and kept.get(key) != value]  # fmt: skip
        if ignored:
            log.warning(
                "resuming %s with its saved config.yaml: --config %s differs in %s (not applied; a resume "
                "continues the run as it was started)", output_dir, config_file, ", ".join(ignored[:8]),
            )  # fmt: skip
    return resumed
