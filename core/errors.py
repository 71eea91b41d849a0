"""The one error type users see, and the exit code it maps to."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

from core.secrets import redact_text

USER_ERROR_EXIT_CODE = 2

T = TypeVar("T")


class UserError(Exception):
    """Bad input (a file, a key, a value) that the user can fix.

    The message is one line and names the culprit; entry points print it and exit 2
    instead of showing a traceback.
    """


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap an entry point so that a `UserError` prints one line and exits with code 2.

    Any other error keeps its traceback (exit 1), with URL credentials redacted: MLflow's and requests' errors
    quote the full tracking URL, token included."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            message = redact_text(" ".join(str(error).split()))  # keep it on one line
            # Last, whatever came before: a pipe block-buffers stdout, which would otherwise print after this
            # line at exit (and under `accelerate launch`, our line must sit right above its traceback).
            sys.stdout.flush()
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(USER_ERROR_EXIT_CODE) from None
        except Exception:
            sys.stdout.flush()
            print(redact_text(traceback.format_exc()), end="", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return wrapper
