"""Checkpoints: `accelerator.save_state` into a staging folder, renamed into place when complete.

A checkpoint folder `checkpoints/step_000120/` exists only once it is whole: its completion
marker `training_state.json` is written last, inside the staging folder, before the rename.
A folder without the marker (a crash of an older version mid-save) is skipped with a warning.
We name and prune checkpoints ourselves rather than use `automatic_checkpoint_naming`, whose
iteration counter does not advance after `load_state` (accelerate #1601, #3306).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from core.errors import UserError
from core.files import write_error_reason

log = logging.getLogger(__name__)
MARKER = "training_state.json"
_NAME = re.compile(r"^step_(\d+)$")


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first; incomplete ones are reported and left alone."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = _NAME.match(folder.name)
        if not match or not folder.is_dir():
            continue
        if (folder / MARKER).is_file():
            found.append((int(match.group(1)), folder))
        else:
            log.warning("skipping incomplete checkpoint %s (no %s)", folder, MARKER)
    return [folder for _, folder in sorted(found)]


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, step: int, keep: int, written: set[int] | None = None
) -> Path:
    """Every process calls this (each saves its own RNG state); the main process finalizes.

    Pruning keeps the newest `keep` and removes only checkpoints this job wrote (`written`, the steps it saved,
    updated here): one it did not write (a run resumed under another config, another job's) is never removed.
    Without `written` (older callers) every old checkpoint beyond `keep` is pruned.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:06d}"
    staging = root / f".step_{step:06d}.partial"
    try:
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # The marker lists every file's size and hash: a file truncated or swapped later is detected on load.
            files = {p.name: _file_record(p) for p in sorted(staging.iterdir()) if p.is_file()}
            (staging / MARKER).write_text(json.dumps({"step": step, "files": files}))
            if final.exists():  # re-saving the same step after a resume
                shutil.rmtree(final)
            os.replace(staging, final)
            if written is not None:
                written.add(step)
            for old in complete_checkpoints(output_dir)[:-keep]:
                if written is None or _step_of(old) in written:
                    shutil.rmtree(old, ignore_errors=True)
    except Exception as error:  # a full disk surfaces as OSError, torch's RuntimeError or SafetensorError
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        previous = complete_checkpoints(output_dir)
        kept = f"; the previous checkpoint {previous[-1]} is intact" if previous else ""
        reason = write_error_reason(error)
        raise UserError(f"cannot write checkpoint {final} (disk full or not writable?): {reason}{kept}") from None
    accelerator.wait_for_everyone()
    return final


def check_resume_target(resume: str) -> None:
    """`--resume` is 'latest' or a complete checkpoint folder (checked before any work)."""
    if resume != "latest" and not (Path(resume) / MARKER).is_file():
        raise UserError(f"--resume {resume} is not a complete checkpoint folder (no {MARKER})")


def _step_of(folder: Path) -> int:
    return int(_NAME.match(folder.name).group(1))


# What torch and accelerate say when a checkpoint's tensors do not fit the model or optimizer being resumed.
_MISMATCH = ("size mismatch", "Missing key", "Unexpected key", "doesn't match the size", "does not match",
             "loaded state dict contains a parameter group", "shape")  # fmt: skip


def load_latest_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, resume: str) -> int:
    """Load `resume` ('latest' or a checkpoint folder); returns the step reached, 0 if none exists.

    With 'latest', a checkpoint that is damaged (a file missing, truncated or changed since it was written) is
    skipped with a warning for the one before it. One that is intact but does not fit the model being resumed
    (another architecture or optimizer) stops the job naming the mismatch: falling back to an older
    checkpoint, or to step 0, would train something else into this run's folder.
    """
    if resume != "latest":
        check_resume_target(resume)
        candidates = [Path(resume)]
    else:
        candidates = list(reversed(complete_checkpoints(output_dir)))
    for folder in candidates:
        try:
            verify_checkpoint(folder)
        except Exception as error:
            if resume != "latest":
                raise UserError(f"cannot load checkpoint {folder}: {' '.join(str(error).split())[:200]}") from None
            log.warning("checkpoint %s is unreadable (%s); trying the one before", folder, str(error)[:200])
            continue
        try:
            accelerator.load_state(str(folder))
        except Exception as error:
            reason = " ".join(str(error).split())
            if resume == "latest" and not any(sign in reason for sign in _MISMATCH):
                log.warning("checkpoint %s is unreadable (%s); trying the one before", folder, reason[:200])
                continue
            raise UserError(
                f"checkpoint {folder} does not fit the model being resumed ({reason[:240]}): the run's config.yaml "
                "no longer describes it; nothing was changed"
            ) from None
        return json.loads((folder / MARKER).read_text())["step"]
    if candidates:
        raise UserError(
            f"no checkpoint of {output_dir} could be loaded (every one is damaged; see the warnings above): "
            "nothing was changed; resume from a copy, or start a new run in another output_dir"
        )
    return 0


def _file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def verify_checkpoint(folder: Path) -> None:
    """Raise ValueError unless `folder` holds the files its marker lists, unchanged, and no pickled code.

    Accelerate loads everything with `weights_only=True` except registered custom objects (our EMA),
    which it unpickles with `weights_only=False`; loading those first with `weights_only=True` proves
    they hold only tensors and plain values, so no code in a tampered checkpoint ever runs.
    Markers of older checkpoints list no files; those are checked only by loading them.
    """
    import torch

    recorded = json.loads((folder / MARKER).read_text()).get("files", {})
    for name, expected in recorded.items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{name} is missing")
        if _file_record(path) != expected:
            raise ValueError(f"{name} is truncated or changed since it was written")
    for path in sorted(folder.glob("custom_checkpoint_*.pkl")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path.name} is not a plain tensor file ({' '.join(str(error).split())[:120]})") from None
