"""Files written whole or not at all: a reader, or a crash mid-write, never sees half of one."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` under a temporary name beside `path`, then rename it into place.

    The temporary name is unique per call, so concurrent writers (trials sharing a folder over
    a network file system) never write into each other's file; the last rename wins, intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "w", newline="") as stream:
            stream.write(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
