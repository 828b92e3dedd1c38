"""File locks (flock) that serialise the sandbox's work across processes.

One place for the pattern that builds, up/down, agent starts, the agent itself and ephemeral sandboxes
all use: several test sessions and CLI calls may run at once on one machine.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on `path` (created if missing) for the block, waiting for any holder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def try_exclusive_lock(path: str | Path) -> int | None:
    """An open fd holding an exclusive lock on `path`, or None if another process holds it.

    The lock lasts until the fd is closed (or the process exits). The file is not emptied: a holder may
    keep its PID in it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
