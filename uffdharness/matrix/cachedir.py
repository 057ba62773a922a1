"""Where the matrix keeps downloaded kernels and built initramfs images, and how runs share it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .children import CHILDREN


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/uffdharness/kernels`, defaulting to `~/.cache/uffdharness/kernels`."""
    override = os.environ.get("UFFDHARNESS_KERNEL_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uffdharness" / "kernels"


LOCK_POLL_S = 0.1


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_path` so parallel runs fill one cache entry once.

    Waits by polling, so a run asked to stop while another run holds the lock (say, for a
    download) raises children.Stopped instead of waiting for it.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock_file:
        while True:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                CHILDREN.check()
                time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` whole, so a reader never sees a half-written file; a failed write
    (ENOSPC) leaves `path` as it was and no temporary file behind."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the cache from other users
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
