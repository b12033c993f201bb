"""Ctrl-C and SIGTERM end a run promptly on every rank, leaving the last checkpoint usable.

The handler raises `RunInterrupted` in the main thread, so the run stops at the next
Python bytecode, logs why and closes cleanly (checkpoints are written atomically, so the
last complete one survives). A rank blocked inside a collective (its peer already gone)
would never get back to Python to see that exception: a watchdog thread then ends the
process after `grace_s`, instead of leaving it orphaned until the process-group timeout.
A signal that lands while a file is being written (`signals_deferred`) is raised once the
write is complete: raised inside torch.save, it left the zip writer half-closed and the
run died with that library's traceback instead of the one-line reason.
"""

import os
import signal
import threading
from contextlib import contextmanager

from pgolf.errors import TrainingError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Deferral:
    """Signals held back while a write is in progress (main thread only, so no lock)."""
    depth = 0
    pending: "RunInterrupted | None" = None


class RunInterrupted(TrainingError):
    """The run was stopped by a signal (Ctrl-C, SIGTERM from torchrun or a scheduler)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@contextmanager
def stop_on_signals(where: str, grace_s: float = 30.0):
    """Within the block, SIGINT/SIGTERM raise RunInterrupted; no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        timer = threading.Timer(grace_s, os._exit, args=(128 + signum,))
        timer.daemon = True
        timer.start()
        name = signal.Signals(signum).name
        stop = RunInterrupted(f"stopped by {name}; {where} keeps the last complete checkpoint "
                              f"(continue with --resume {where} if checkpoints were on)", signum)
        if _Deferral.depth:
            _Deferral.pending = _Deferral.pending or stop
            return
        raise stop

    previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def signals_deferred():
    """Within the block, a stop signal waits; it is raised when the block ends cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Deferral.depth += 1
    try:
        yield
    finally:
        _Deferral.depth -= 1
    if _Deferral.depth == 0 and _Deferral.pending is not None:
        stop, _Deferral.pending = _Deferral.pending, None
        raise stop
