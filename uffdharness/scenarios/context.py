"""What a scenario function receives: the memory kind, the kernel, and resource helpers.

A scenario runs in a forked child that exits afterwards, so whatever it maps or opens
goes away with the child; the helpers still close what they made, for use outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..abi import Feature
from ..events import Event
from ..kernelversion import KernelVersion
from ..memory import MemoryKind, Region, allocate
from ..uffd import Userfaultfd
from .model import Skip, missing_features_reason

# Feature bits a register mode needs on each memory kind (UAPI: MISSING_SHMEM and
# MISSING_HUGETLBFS 4.11, WP_HUGETLBFS_SHMEM 5.19, MINOR_HUGETLBFS 5.13, MINOR_SHMEM 5.14).
_MODE_FEATURES = {
    ("missing", "anon"): Feature(0),
    ("missing", "shmem"): Feature.MISSING_SHMEM,
    ("missing", "hugetlb"): Feature.MISSING_HUGETLBFS,
    ("wp", "anon"): Feature.PAGEFAULT_FLAG_WP,
    ("wp", "shmem"): Feature.PAGEFAULT_FLAG_WP | Feature.WP_HUGETLBFS_SHMEM,
    ("wp", "hugetlb"): Feature.PAGEFAULT_FLAG_WP | Feature.WP_HUGETLBFS_SHMEM,
    ("minor", "shmem"): Feature.MINOR_SHMEM,
    ("minor", "hugetlb"): Feature.MINOR_HUGETLBFS,
}


def _family(kind: MemoryKind) -> str:
    if kind.is_hugetlb:
        return "hugetlb"
    return "anon" if kind is MemoryKind.ANON else "shmem"


@dataclass
class Context:
    memory: MemoryKind
    kernel: KernelVersion
    offered: Feature
    _regions: list[Region] = field(default_factory=list)
    _uffds: list[Userfaultfd] = field(default_factory=list)

    @property
    def page_size(self) -> int:
        return self.memory.page_size

    def require(self, features: Feature) -> None:
        missing = Feature(int(features) & ~int(self.offered))
        if missing:
            raise Skip(missing_features_reason(missing))

    def mode_features(self, *modes: str) -> Feature:
        """Features the given register modes need on this memory kind (Skip if impossible)."""
        needed = Feature(0)
        for mode in modes:
            key = (mode, _family(self.memory))
            if key not in _MODE_FEATURES:
                raise Skip(f"{mode} faults are not supported on {self.memory.value} memory")
            needed |= _MODE_FEATURES[key]
        self.require(needed)
        return needed

    def region(self, pages: int, kind: MemoryKind | str | None = None, **kwargs: Any) -> Region:
        region = allocate(kind or self.memory, pages, **kwargs)
        self._regions.append(region)
        return region

    def uffd(self, features: Feature = Feature(0), **kwargs: Any) -> Userfaultfd:
        self.require(features)
        uffd = Userfaultfd.open(features, **kwargs)
        self._uffds.append(uffd)
        return uffd

    def close(self) -> None:
        for uffd in self._uffds:
            uffd.close()
        for region in reversed(self._regions):
            if not region.closed:
                region.close()


class Background:
    """Run a GIL-releasing call (a region access, a syscall) in a thread that may block
    in a fault or on a pending event, and collect its result or exception."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _main(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the scenario
            self.error = exc

    def finished(self, timeout: float = 5.0) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def value(self, timeout: float = 5.0) -> Any:
        if not self.finished(timeout):
            raise TimeoutError(f"background call still blocked after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def next_event(uffd: Userfaultfd, timeout: float = 5.0) -> Event | None:
    events = uffd.read_events(max_events=1, timeout=timeout)
    return events[0] if events else None
