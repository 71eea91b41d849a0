"""The output folder of one training job: claimed once, never silently shared by two runs."""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import UserError


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
        output_dir.mkdir(parents=True, exist_ok=True)
        temporary = output_dir / f".config.yaml.{os.getpid()}.tmp"
        temporary.write_text(config_yaml)
        if resuming:
            os.replace(temporary, config_file)
        else:
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
