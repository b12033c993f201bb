"""Ctrl-C and SIGTERM end a run promptly on every rank, leaving the last checkpoint usable.

The handler raises `RunInterrupted` in the main thread, so the run stops at the next
Python bytecode, logs why and closes cleanly (checkpoints are written atomically, so the
last complete one survives). A rank blocked inside a collective (its peer already gone)
would never get back to Python to see that exception: a watchdog thread then ends the
process after `grace_s`, instead of leaving it orphaned until the process-group timeout.
"""

import os
import signal
import threading
from contextlib import contextmanager

from pgolf.errors import TrainingError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
        raise RunInterrupted(f"stopped by {name}; {where} keeps the last complete checkpoint "
                             f"(continue with --resume {where} if checkpoints were on)", signum)

    previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
