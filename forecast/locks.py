"""File locks for stores shared by several processes (POSIX `flock`, local disks).

Two uses: `exclusive(path)` refuses a second run for the same thing (a forecast for one init
time) instead of letting two runs interleave their writes; `serialised(path)` waits its turn
around a short read-modify-write (a store's attributes). The kernel drops a lock when its
process dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path


class LockBusy(RuntimeError):
    pass


def _open(path: str | Path) -> int:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)


@contextlib.contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Hold `path` exclusively or raise LockBusy at once, naming `what` is being run."""
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = Path(path).read_text().strip() or "another process"
            raise LockBusy(
                f"{what} is already running ({holder} holds {path}); this run stops instead of "
                "interleaving its writes. Rerun it after that one ends: completed work is kept."
            ) from e
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def store_lock(location: str | Path, timeout_s: float = 600.0) -> contextlib.AbstractContextManager[None]:
    """`serialised` on the lock file beside a store (`STORE.lock`): the one lock every writer
    of that store's shared parts (init times, state, statistics, scores) takes."""
    return serialised(f"{str(location).rstrip('/')}.lock", timeout_s)


@contextlib.contextmanager
def serialised(path: str | Path, timeout_s: float = 600.0) -> Iterator[None]:
    """Wait (up to `timeout_s`) for `path`, hold it for the block."""
    fd = _open(path)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waited {timeout_s:.0f} s for {path}") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
