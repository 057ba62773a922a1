"""Typed uffd_msg values: a closed set of events instead of raw bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .abi import EventType, FaultFlag

if TYPE_CHECKING:
    from .uffd import Userfaultfd


@dataclass(frozen=True, slots=True)
class PagefaultEvent:
    address: int
    flags: FaultFlag
    thread_id: int  # 0 unless UFFD_FEATURE_THREAD_ID was granted
    kind = EventType.PAGEFAULT

    @property
    def is_write(self) -> bool:
        return bool(self.flags & FaultFlag.WRITE)

    @property
    def is_wp(self) -> bool:
        return bool(self.flags & FaultFlag.WP)

    @property
    def is_minor(self) -> bool:
        return bool(self.flags & FaultFlag.MINOR)

    @property
    def fault_kind(self) -> str:
        """'wp', 'minor' or 'missing' (the three register modes)."""
        if self.is_wp:
            return "wp"
        if self.is_minor:
            return "minor"
        return "missing"


@dataclass(frozen=True, slots=True)
class ForkEvent:
    """The child's new uffd: already installed in this process and owned by the event."""

    uffd: Userfaultfd
    kind = EventType.FORK


@dataclass(frozen=True, slots=True)
class RemapEvent:
    old_address: int
    new_address: int
    length: int
    kind = EventType.REMAP


@dataclass(frozen=True, slots=True)
class RemoveEvent:
    """MADV_DONTNEED / MADV_REMOVE dropped [start, end)."""

    start: int
    end: int
    kind = EventType.REMOVE


@dataclass(frozen=True, slots=True)
class UnmapEvent:
    start: int
    end: int
    kind = EventType.UNMAP


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    event: int
    raw: bytes


Event = PagefaultEvent | ForkEvent | RemapEvent | RemoveEvent | UnmapEvent | UnknownEvent
