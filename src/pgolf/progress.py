"""Progress lines with an ETA for every phase that can run long (evals, the audit, compile
priming, calibration, quantization), in the log's `key:value` style (runlog.parse_event).

A phase that prints nothing for minutes looks hung; one that prints every unit of a fast
loop buries the log. So a line comes at the first step, at the last, and in between when
`every_s` seconds have passed since the previous one (and, for phases whose lines feed
plots, at every total/lines-th unit as well).
"""

import time
from typing import Callable

# The longest a long phase stays silent between two of its steps.
PROGRESS_EVERY_S = 10.0


class Progress:
    """`<what>:<done>/<total> [extra] eta:<s>s[tail]` lines; step() returns the ETA in seconds.

    log None counts time without writing. `extra` may be a callable, so a value that costs a
    device sync (a running bpb) is read only for the lines actually written. step(0) writes a
    start line with `eta:?` (nothing is known yet) for phases whose first step is the long one.
    """

    def __init__(self, log: Callable[[str], None] | None, what: str, total: int,
                 every_s: float = PROGRESS_EVERY_S, lines: int = 0,
                 clock: Callable[[], float] | None = None) -> None:
        self.log, self.what, self.total = log, what, max(total, 1)
        self.every_s, self.clock = every_s, clock or time.perf_counter
        self.every = max(1, self.total // lines) if lines > 0 else 0
        self.t0 = self.clock()
        self.last: float | None = None  # clock at the previous line

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def due(self, done: int, now: float) -> bool:
        return (self.last is None or done >= self.total or now - self.last >= self.every_s
                or (self.every > 0 and done % self.every == 0))

    def step(self, done: int, extra: str | Callable[[], str] = "", tail: str = "") -> float:
        now = self.clock()
        eta = (now - self.t0) / max(done, 1) * max(self.total - done, 0)
        if self.log is not None and self.due(done, now):
            self.last = now
            text = extra() if callable(extra) else extra
            shown = f"{eta:.1f}s" if done > 0 else "?"
            self.log(f"{self.what}:{done}/{self.total}{' ' + text if text else ''} eta:{shown}{tail}")
        return eta
