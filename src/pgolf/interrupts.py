"""Ctrl-C and SIGTERM end a run promptly on every rank, leaving the last checkpoint usable.

The handler raises `RunInterrupted` in the main thread, so the run stops at the next
Python bytecode, logs why and closes cleanly (checkpoints are written atomically, so the
last complete one survives). A rank blocked inside a collective (its peer gone or stopped)
never gets back to Python, so neither the exception nor any Python signal handler runs:
the C-level handler still writes the signal number to a wakeup socket, a thread reading it
arms a watchdog, and the watchdog ends the process `grace_s` later with one line, well
inside the 30 s torchrun waits between its SIGTERM and a SIGKILL.
A signal that lands while a file is being written (`signals_deferred`) is raised once the
write is complete: raised inside torch.save, it left the zip writer half-closed and the
run died with that library's traceback instead of the one-line reason.
"""

import os
import signal
import socket
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


class _Watchdog:
    """Ends the process `grace_s` after the first stop signal, whatever the main thread does."""

    def __init__(self, where: str, grace_s: float) -> None:
        self.where, self.grace_s = where, grace_s
        self.lock = threading.Lock()
        self.armed = False

    def arm(self, signum: int) -> None:
        with self.lock:
            if self.armed:
                return
            self.armed = True
        timer = threading.Timer(self.grace_s, self._end, args=(signum,))
        timer.daemon = True
        timer.start()

    def _end(self, signum: int) -> None:
        name = signal.Signals(signum).name
        line = (f"stopped by {name}; still blocked {self.grace_s:g} s later (a collective waiting on a "
                f"silent peer?), ended without cleanup; {self.where} keeps the last complete checkpoint\n")
        os.write(2, line.encode())
        os._exit(128 + signum)


class _SignalWatcher:
    """Sees stop signals through the wakeup socket, which the C-level handler writes to even
    while the main thread is blocked in C++ code (a gloo or NCCL wait)."""

    def __init__(self, watchdog: _Watchdog) -> None:
        self.reader, self.writer = socket.socketpair()
        self.writer.setblocking(False)
        self.previous = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        self.thread = threading.Thread(target=self._watch, args=(watchdog,), daemon=True)
        self.thread.start()

    def _watch(self, watchdog: _Watchdog) -> None:
        with self.reader:
            while data := self.reader.recv(64):
                for signum in data:
                    if signum in _SIGNALS:
                        watchdog.arm(signum)

    def close(self) -> None:
        signal.set_wakeup_fd(self.previous)
        self.writer.close()  # the reader sees the end of the stream and returns


@contextmanager
def stop_on_signals(where: str, grace_s: float = 15.0):
    """Within the block, SIGINT/SIGTERM raise RunInterrupted; no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    watchdog = _Watchdog(where, grace_s)

    def handler(signum, frame):
        watchdog.arm(signum)
        name = signal.Signals(signum).name
        stop = RunInterrupted(f"stopped by {name}; {where} keeps the last complete checkpoint "
                              f"(continue with --resume {where} if checkpoints were on)", signum)
        if _Deferral.depth:
            _Deferral.pending = _Deferral.pending or stop
            return
        raise stop

    previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    watcher = _SignalWatcher(watchdog)
    try:
        yield
    finally:
        watcher.close()
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
