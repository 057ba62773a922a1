"""Long-term pins of user pages with what stock kernels have: io_uring fixed buffers.

IORING_REGISTER_BUFFERS (5.1) pins every page of a buffer with FOLL_WRITE | FOLL_LONGTERM
(pin_user_pages(), 5.7) until the buffers are unregistered or the ring is closed: the pin
a DMA buffer holds, which makes fork() copy a private anonymous page at once instead of
sharing it (page_needs_cow_for_dma(), "mm: do early cow for pinned pages during fork()
for ptes", 5.9). CONFIG_GUP_TEST, which the kernel selftests pin with, is absent from
distribution kernels. The rings are never mapped: registration needs none of them.
"""

from __future__ import annotations

import errno
import os

from . import syscalls as sc
from .errors import UffdError, errno_name
from .owned_fd import OwnedFd

IO_URING_DISABLED = "/proc/sys/kernel/io_uring_disabled"  # 6.6


def _disabled_setting() -> int | None:
    try:
        with open(IO_URING_DISABLED) as setting:
            return int(setting.read())
    except (OSError, ValueError):
        return None


def refusal_reason(code: int, disabled: int | None) -> str:
    """Why io_uring_setup(2) refused with ``code``, given kernel.io_uring_disabled
    (None where the sysctl is absent, before 6.6)."""
    if code == errno.ENOSYS:
        return "kernel has no io_uring (CONFIG_IO_URING off: io_uring_setup gives ENOSYS)"
    if code == errno.EPERM and disabled == 2:
        return "io_uring is disabled (kernel.io_uring_disabled=2: io_uring_setup gives EPERM)"
    if code == errno.EPERM and disabled == 1:
        return (
            "io_uring is restricted (kernel.io_uring_disabled=1: only CAP_SYS_ADMIN or "
            "kernel.io_uring_group may create rings) and this process may not"
        )
    return f"io_uring_setup refused: {errno_name(code)} ({os.strerror(code)})"


def unavailable_reason() -> str | None:
    """Why this process cannot pin through io_uring, or None when a ring opens."""
    try:
        fd = sc.io_uring_setup(1)
    except UffdError as exc:
        return refusal_reason(exc.errno, _disabled_setting())
    os.close(fd)
    return None


class LongTermPin(OwnedFd):
    """[addr, addr + length) pinned FOLL_LONGTERM for as long as this object is open: an
    io_uring instance with the range registered as its one fixed buffer. Registration
    faults the pages in as writes (a missing or uffd-wp page raises a kernel-mode fault)
    and is accounted to RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK (ENOMEM)."""

    _what = "io_uring pin"

    def __init__(self, addr: int, length: int) -> None:
        self.addr = addr
        self.length = length
        self._fd = sc.io_uring_setup(1)
        try:
            sc.io_uring_register_buffer(self._fd, addr, length)
        except BaseException:
            super().close()
            raise

    def close(self) -> None:
        """Unpin, then close the ring. Closing alone drops the pins only when the ring's
        deferred teardown (io_ring_exit_work) runs, later: the pages (a hugetlb pool's
        among them) would stay taken past close()."""
        if self._fd >= 0:
            try:
                sc.io_uring_unregister_buffers(self._fd)
            except UffdError:
                pass  # nothing registered; closing the ring is all there is to do
        super().close()
