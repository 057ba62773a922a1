"""A file descriptor with one owner that closes it exactly once."""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T", bound="OwnedFd")


class OwnedFd:
    _fd: int = -1
    _what = "file descriptor"

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{self._what} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass
