"""The one way pgolf writes a file: a temp file beside it, fsync, rename.

Readers see the old file or the complete new one, never a partial one, and a full disk
becomes one line that names the path instead of a library's traceback.
"""

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from pgolf.errors import PgolfError
from pgolf.interrupts import signals_deferred

_ATOMIC_ADVICE = {
    errno.ENOSPC: "no space left on device: free disk space or write to another disk",
    errno.EDQUOT: "disk quota exceeded: free space or write to another disk",
    errno.EACCES: "permission denied: make the folder writable or write elsewhere",
    errno.EPERM: "permission denied: make the folder writable or write elsewhere",
    errno.EROFS: "read-only file system: write elsewhere",
}


class AtomicWriteError(PgolfError, RuntimeError):
    """A file that could not be written; whatever was at its path before is untouched."""

    def __init__(self, message: str, path: str, code: int | None) -> None:
        super().__init__(message)
        self.path, self.errno = path, code


def atomic_write(path: str | os.PathLike, write_fn: Callable[[BinaryIO], Any], *, overwrite: bool = True,
                 keep_previous: str | os.PathLike | None = None) -> Path:
    """Write `path` with `write_fn(binary_file)` through a temp file in the same folder.

    overwrite=False refuses an existing path with FileExistsError, also when another writer
    wins the race. keep_previous: the file being replaced is moved there first. On any
    failure the temp file is removed; an OSError (even one a library wrapped in its own
    error, as torch.save does) becomes a one-line AtomicWriteError.
    """
    p = Path(path)
    with signals_deferred():  # Ctrl-C mid-write would leave torch.save's writer half-closed
        return _write_through_temp(p, write_fn, overwrite, keep_previous)


def _write_through_temp(p: Path, write_fn: Callable[[BinaryIO], Any], overwrite: bool,
                        keep_previous: str | os.PathLike | None) -> Path:
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        with _atomic_open(fd) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide run outputs from the other users of a box
        if not overwrite:
            _atomic_link(tmp, p)
        else:
            if keep_previous is not None and p.exists():
                os.replace(p, keep_previous)
            os.replace(tmp, p)
        tmp = None
        _atomic_sync_dir(p.parent)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        err = _atomic_os_error(exc) if isinstance(exc, Exception) else None
        if err is None or isinstance(err, FileExistsError):
            raise
        advice = _ATOMIC_ADVICE.get(err.errno, f"{err.strerror or err}: check the path and the disk")
        raise AtomicWriteError(f"cannot write {p}: {advice}; the previous {p.name}, if any, is unchanged",
                               str(p), err.errno) from None
    return p


def _atomic_open(fd: int) -> BinaryIO:
    return os.fdopen(fd, "wb")


def _atomic_link(tmp: str, p: Path) -> None:
    try:
        os.link(tmp, p)  # no-clobber, and atomic even if another writer races us
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "already exists", str(p)) from None
    except OSError:
        if p.exists():
            raise FileExistsError(errno.EEXIST, "already exists", str(p)) from None
        os.replace(tmp, p)  # a filesystem without hard links
        return
    os.unlink(tmp)


def _atomic_sync_dir(folder: Path) -> None:
    # The rename is durable only once the folder is synced; some filesystems refuse: best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind exc: torch.save, for one, reports a failed write as a RuntimeError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
