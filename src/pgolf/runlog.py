"""Plain-text run logs: one `key:value key:value` line per event, readable and parseable."""

import errno
import json
import os
import time
from typing import Any, Callable, Iterable

from pgolf.atomic import AtomicWriteError, atomic_write


def format_event(fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        if isinstance(v, float):
            v = f"{v:.6g}" if abs(v) < 1e6 else f"{v:.0f}"
        parts.append(f"{k}:{v}")
    return " ".join(parts)


def parse_event(line: str) -> dict[str, str]:
    """Inverse of format_event for lines whose values hold no spaces."""
    out = {}
    for part in line.split():
        if ":" in part:
            k, v = part.split(":", 1)
            out[k] = v
    return out


class RunLog:
    """Writes to stdout and to `path` (append); only the main rank writes.

    sinks: callables given every line as parse_event's dict (trackers such as TensorBoard),
    so they see exactly the log's values; one that raises is dropped with a warning line,
    because a dashboard is never worth a run. A sink's `close()`, if any, runs at close.
    """

    def __init__(self, path: str | None, enabled: bool = True, echo: bool = True, stream=None,
                 sinks: Iterable[Callable[[dict[str, str]], Any]] = ()) -> None:
        self.enabled = enabled
        self.echo = echo
        self.stream = stream  # None = stdout; commands whose stdout is data pass sys.stderr
        self.fh = _open_append(path) if (path and enabled) else None
        self.sinks = list(sinks) if enabled else []

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.echo:
            print(text, flush=True, file=self.stream)
        if self.fh:
            try:
                self.fh.write(text + "\n")
                self.fh.flush()
            except OSError as e:
                # The log is append-only, so it cannot be written atomically: say where it broke.
                raise AtomicWriteError(f"cannot append to {self.fh.name}: {e.strerror}; free disk space or "
                                       "write the run elsewhere", self.fh.name, e.errno) from None
        if self.sinks:
            self.feed_sinks(parse_event(text))

    def feed_sinks(self, fields: dict[str, str]) -> None:
        for sink in list(self.sinks):
            try:
                sink(fields)
            except Exception as e:  # noqa: BLE001 - whatever a tracker raises, training goes on
                self.sinks.remove(sink)
                why = (str(e).splitlines() or [type(e).__name__])[0]
                self.event(event="warning", message=f"tracker_{getattr(sink, 'name', 'sink')}_dropped:_{why}"
                           .replace(" ", "_"))

    def event(self, **fields: Any) -> None:
        self.line(format_event(fields))

    def close(self) -> None:
        if self.fh:
            self.fh.close()
            self.fh = None
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                getattr(sink, "close", lambda: None)()
            except Exception:  # noqa: BLE001 - the run's own files are already safe
                pass


def _open_append(path: str):
    """Open a log for appending, never through a symbolic link (it could point anywhere)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        why = "it is a symbolic link; replace it with a real file" if e.errno == errno.ELOOP else e.strerror
        raise AtomicWriteError(f"cannot open log {path}: {why} (nothing was written)", path, e.errno) from None
    return os.fdopen(fd, "a", encoding="utf-8")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def now_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
