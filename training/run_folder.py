"""The output folder of one training job: claimed once, never silently shared by two runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

from core.errors import UserError
from core.files import write_text_atomic

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
        if resuming:
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
    try:
        import fcntl
    except ImportError:
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        handle = open(output_dir / LOCK_FILE, "a+")
    except OSError as error:
        raise UserError(f"cannot write to output_dir {output_dir}: {error.strerror or error}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(
            f"output_dir {output_dir} is in use by a running job (pid {owner}); "
            "wait for it to end or stop it before resuming"
        ) from None
    except OSError as error:  # e.g. ENOLCK on a network file system without locking: go on unlocked
        log.warning("cannot lock output_dir %s (%s); not guarding it against a concurrent resume", output_dir, error)
        handle.close()
        return
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held_locks[key] = handle


def unlock_output_dir(output_dir: Path) -> None:
    handle = _held_locks.pop(str(output_dir.resolve()), None)
    if handle is not None:
        handle.close()
