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


def write_error_reason(error: BaseException) -> str:
    """Why a write failed, in words: the OS error's text, also when a library wraps it in its own message
    (safetensors: "I/O error: File too large (os error 27)", torch's RuntimeError)."""
    import re

    reason = getattr(error, "strerror", None) or " ".join(str(error).split())[:200] or type(error).__name__
    number = re.search(r"(?:os error|code:) (\d+)", reason)
    return os.strerror(int(number.group(1))) if number else reason


def lock_folder(
    folder: str | os.PathLike, lock_name: str, what: str, advice: str = "wait for it to end or use another folder",
    called: str = "",
):  # fmt: skip
    """An exclusive lock on `folder` held by this process (`flock` on folder/lock_name, the pid written in it):
    the open handle to keep, or None where locks do not exist or are not shared (Windows, some network file
    systems). A folder another live process holds is refused, naming its pid and `what` it is; `called` names the
    folder in the message (e.g. "output_dir "), `advice` says what to do.

    The kernel drops a flock when its process dies, kill -9 included, so a crashed job never leaves it locked.
    """
    import logging

    from core.errors import UserError

    try:
        import fcntl
    except ImportError:
        return None
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # lock_name "": the folder itself is locked (no file is left in it); else a file in it, holding the pid.
        handle = open(folder / lock_name, "a+") if lock_name else _FolderHandle(folder)
    except OSError as error:
        raise UserError(f"cannot write to {folder}: {error.strerror or error}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = ""
        if lock_name:
            handle.seek(0)
            owner = f" (pid {handle.read().strip() or 'unknown'})"
        handle.close()
        raise UserError(f"{called}{folder} is in use by {what}{owner}; {advice}") from None
    except OSError as error:  # e.g. ENOLCK on a network file system without locking: go on unlocked
        logging.getLogger(__name__).warning(
            "cannot lock %s (%s); not guarding it against a concurrent job", folder, error
        )
        handle.close()
        return None
    if lock_name:
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle


class _FolderHandle:
    """An open directory, for `flock` (Python's `open` does not open directories)."""

    def __init__(self, folder: Path):
        self.fd = os.open(folder, os.O_RDONLY)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
