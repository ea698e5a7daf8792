"""Short exclusive locks on a file, so several processes can safely update one shared folder.

``flock`` on POSIX (the kernel releases it if the holder dies, so a crash never leaves it stuck);
``msvcrt.locking`` on Windows. The wait is bounded: a lock held too long is reported in one sentence.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from napari_unet.errors import NapariUnetError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


class LockTimeout(NapariUnetError):
    """A shared folder stayed locked by another process for longer than the allowed wait."""


def try_lock(fd: int) -> bool:
    """Take the exclusive lock on open file descriptor ``fd`` if no one holds it; never waits."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # BlockingIOError on POSIX, PermissionError on Windows
        return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@contextmanager
def exclusive_lock(path: Path | str, *, timeout: float = 30.0, what: str = "the folder") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block.

    Waits up to ``timeout`` seconds for another holder; then raises :class:`LockTimeout`.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not try_lock(fd):
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{what} is locked by another napari-unet process for more than {timeout:g} s "
                    f"(lock file {path}); try again when it has finished."
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)
