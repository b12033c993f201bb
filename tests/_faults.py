"""Faults for tests: a file that fills up like a full disk."""

import errno
import os


def full_disk_after(n_ok: int):
    """An _atomic_open whose file takes n_ok bytes, then fails like a full disk."""
    def opener(fd):
        f = os.fdopen(fd, "wb")

        class Full:
            written = 0

            def write(self, b):
                room = n_ok - self.written
                if len(b) > room:
                    f.write(bytes(b)[:max(room, 0)])
                    f.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.written += len(b)
                return f.write(b)

            def __getattr__(self, name):
                return getattr(f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()
        return Full()
    return opener
