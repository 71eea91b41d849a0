"""Stopping on SIGTERM or Ctrl-C the way `--stop-after-steps` stops: at the end of the step, checkpointed.

What `docker stop`, Kubernetes and Slurm send is SIGTERM, often to the launcher only (`accelerate launch`,
which does not forward it to its child). So the command line (`training.train`'s `main`) installs `STOP`:
a first SIGTERM or SIGINT asks the loop to stop after the current step (checkpoint, the EMA model as of that
step, the MLflow run ended KILLED: `--resume latest` continues it); a second one stops at once. A training
process started by a launcher also asks Linux to send it SIGTERM when the launcher dies (PR_SET_PDEATHSIG),
so a launcher killed alone never leaves its child training on. Library callers (sweeps under Ray, which
manages its workers' signals itself) are unaffected unless they install it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

# Set in the child by `accelerate launch` and `torchrun`: the parent is a launcher, not the user's shell
# (a shell's child, e.g. under nohup, must outlive it).
LAUNCHER_VARIABLES = ("ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID")


class StopRequest:
    def __init__(self) -> None:
        self.signal: int | None = None
        self.installed = False
        self.in_loop = False  # in the training loop a signal stops after the step; elsewhere at once
        self._first_at = 0.0

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    def install(self) -> None:
        self.signal, self.in_loop, self._first_at = None, False, 0.0  # a fresh command (tests call main twice)
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._handle)
        if not self.installed:  # forked workers (data preprocessing pools) get the default handlers back
            os.register_at_fork(after_in_child=_default_handlers)
        self.installed = True
        if any(name in os.environ for name in LAUNCHER_VARIABLES):
            die_with_parent()

    def _handle(self, number: int, frame) -> None:
        import time

        first = self.signal is None
        if not first and number != self.signal and time.monotonic() - self._first_at < 10:
            # Ctrl-C under a launcher: the launcher dies of the same SIGINT and its death sends us SIGTERM
            # (PR_SET_PDEATHSIG) a moment later; that is the same request, not a second one.
            return
        if first:
            self._first_at = time.monotonic()
        self.signal = number
        if not (self.in_loop and first):  # outside the loop (data, sampling, saving), or asked twice: stop now
            raise KeyboardInterrupt
        print(f"{signal.Signals(number).name}: stopping after this step with a checkpoint (send it again to stop "
              "at once)", file=sys.stderr, flush=True)  # fmt: skip


def _default_handlers() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def die_with_parent() -> None:
    """Linux: SIGTERM to this process when its parent exits (the launcher killed alone); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()  # may be 1: a launcher that is a container's entrypoint
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


STOP = StopRequest()
