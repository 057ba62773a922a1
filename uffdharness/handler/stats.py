"""Handler statistics: one snapshot type read from the C counters every engine writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from .._native import ffi, lib
from ..abi import EventType
from ..errors import errno_name
from ..events import RemapEvent, RemoveEvent, UnknownEvent, UnmapEvent


class ReleaseReason(IntEnum):
    """Why the handler unregistered its ranges and woke their faults (uh_stats.released)."""

    NONE = lib.UH_RELEASE_NONE
    STOP = lib.UH_RELEASE_STOP
    LEFT_BEHIND = lib.UH_RELEASE_LEFT_BEHIND
    FAILURE = lib.UH_RELEASE_FAILURE
    CLOSED = lib.UH_RELEASE_CLOSED


OP_NAMES = {
    lib.UH_OP_COPY: "UFFDIO_COPY",
    lib.UH_OP_ZEROPAGE: "UFFDIO_ZEROPAGE",
    lib.UH_OP_MOVE: "UFFDIO_MOVE",
    lib.UH_OP_UNPROTECT: "UFFDIO_WRITEPROTECT(unprotect)",
    lib.UH_OP_CONTINUE: "UFFDIO_CONTINUE",
    lib.UH_OP_WAKE: "UFFDIO_WAKE",
    lib.UH_OP_WRITEPROTECT: "UFFDIO_WRITEPROTECT",
    lib.UH_OP_READ: "read(uffd)",
    lib.UH_OP_POLL: "poll(uffd)",
    lib.UH_OP_NO_ACTION: "policy (no action for this fault kind)",
    lib.UH_OP_CLOSED: "userfaultfd closed",
    lib.UH_OP_LOST: "handler's duplicate closed",
}


def closed_uffd(op: int, fd: int, uffd: int) -> str:
    """Which fd of which served uffd a UH_OP_CLOSED/UH_OP_LOST failure names."""
    if op == lib.UH_OP_LOST:
        return f"the handler's duplicate of uffd {uffd} (fd {fd})"
    if uffd:
        return f"adopted child userfaultfd (fd {fd}, uffd {uffd})"
    return f"userfaultfd (fd {fd})"


_EVENT_NAMES = ("fork", "remap", "remove", "unmap", "unknown")


@dataclass(frozen=True)
class FaultCounts:
    """Pagefault messages read, by register mode and access."""

    missing_read: int = 0
    missing_write: int = 0
    wp_read: int = 0
    wp_write: int = 0
    minor_read: int = 0
    minor_write: int = 0
    rwp_read: int = 0  # read-write protection (7.3)
    rwp_write: int = 0

    @property
    def missing(self) -> int:
        return self.missing_read + self.missing_write

    @property
    def wp(self) -> int:
        return self.wp_read + self.wp_write

    @property
    def minor(self) -> int:
        return self.minor_read + self.minor_write

    @property
    def rwp(self) -> int:
        return self.rwp_read + self.rwp_write

    @property
    def total(self) -> int:
        return self.missing + self.wp + self.minor + self.rwp


@dataclass(frozen=True)
class LatencySummary:
    """Time from reading a fault to resolving it (wake included), over the last
    ``UH_LAT_CAP`` faults for median/p99 and over all of them for min/max/mean."""

    count: int = 0
    min_us: float = 0.0
    median_us: float = 0.0
    p99_us: float = 0.0
    max_us: float = 0.0
    mean_us: float = 0.0


@dataclass(frozen=True)
class ForkAdopted:
    """UFFD_EVENT_FORK: the child's uffd, installed as ``child_fd`` and served as uffd
    number ``child_index`` (-errno if it could not be served and was closed)."""

    child_fd: int
    child_index: int
    kind = EventType.FORK


@dataclass(frozen=True)
class LoggedEvent:
    """A non-cooperative event as the handler received it, on uffd number ``uffd``
    (0: the handler's own, then adopted children in order)."""

    uffd: int
    event: ForkAdopted | RemapEvent | RemoveEvent | UnmapEvent | UnknownEvent


@dataclass(frozen=True)
class HandlerStats:
    faults: FaultCounts = field(default_factory=FaultCounts)
    events: dict[str, int] = field(default_factory=dict)
    pages_resolved: int = 0
    bytes_resolved: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    eexist_races: int = 0
    readahead_skipped: int = 0
    eagain_retries: int = 0
    partial_ops: int = 0
    overtaken: int = 0
    unresolved: int = 0
    unserved: int = 0
    wakes: int = 0
    batches: int = 0
    messages: int = 0
    thread_ids: dict[int, int] = field(default_factory=dict)
    latency: LatencySummary = field(default_factory=LatencySummary)
    released: ReleaseReason = ReleaseReason.NONE
    released_ranges: int = 0
    closed_uffds: int = 0
    policy_failures: int = 0
    uffds_adopted: int = 0
    failure: str | None = None
    wp_addresses: tuple[int, ...] = ()
    events_log: tuple[LoggedEvent, ...] = ()

    @classmethod
    def read(cls, stats: Any) -> HandlerStats:
        """Snapshot a live ``struct uh_stats``. Counters are aligned 64-bit words written
        with atomic stores, so each value is whole; the snapshot as a set is not atomic."""
        f = stats.faults
        faults = FaultCounts(*(f[kind][write] for kind in range(4) for write in (0, 1)))
        events = {name: stats.events[i] for i, name in enumerate(_EVENT_NAMES)}
        errors = {
            (errno_name(code) if code else "unknown"): stats.errors[code]
            for code in range(lib.UH_ERRNO_MAX)
            if stats.errors[code]
        }
        ntids = min(stats.ntids, lib.UH_MAX_TIDS)
        thread_ids = {stats.tids[i].tid: stats.tids[i].faults for i in range(ntids)}
        wp_count = min(stats.wplog_count, lib.UH_WPLOG_CAP)
        wp_addresses = tuple(ffi.unpack(stats.wplog, wp_count)) if wp_count else ()
        log = tuple(
            _logged(stats.evlog[i]) for i in range(min(stats.evlog_count, lib.UH_EVLOG_CAP))
        )
        failure = None
        if stats.failed_errno or stats.policy_failures:
            failure = describe_failure(
                stats.failed_errno,
                stats.failed_op,
                stats.failed_addr,
                stats.failed_len,
                stats.failed_done,
            )
        return cls(
            faults=faults,
            events=events,
            pages_resolved=stats.pages_resolved,
            bytes_resolved=stats.bytes_resolved,
            errors=errors,
            eexist_races=stats.eexist_races,
            readahead_skipped=stats.readahead_skipped,
            eagain_retries=stats.eagain_retries,
            partial_ops=stats.partial_ops,
            overtaken=stats.overtaken,
            unresolved=stats.unresolved,
            unserved=stats.unserved,
            wakes=stats.wakes,
            batches=stats.batches,
            messages=stats.messages,
            thread_ids=thread_ids,
            latency=_latency(stats),
            released=ReleaseReason(stats.released),
            released_ranges=stats.released_ranges,
            closed_uffds=stats.closed_uffds,
            policy_failures=stats.policy_failures,
            uffds_adopted=stats.uffds_adopted,
            failure=failure,
            wp_addresses=wp_addresses,
            events_log=log,
        )


def describe_failure(err: int, op: int, addr: int, length: int, done: int) -> str:
    name = OP_NAMES.get(op, f"op {op}")
    if op == lib.UH_OP_NO_ACTION:
        kind = {0: "missing", 1: "wp", 2: "minor", 3: "rwp"}.get(length, str(length))
        return f"no action for a {kind} fault at {addr:#x}"
    if op in (lib.UH_OP_CLOSED, lib.UH_OP_LOST):
        return f"{closed_uffd(op, addr, length)} closed under the handler"
    if not err:
        return "policy raised"
    return f"{name} [{addr:#x}+{length:#x}]: {errno_name(err)}, {done} bytes done"


def _latency(stats: Any) -> LatencySummary:
    count = stats.lat_count
    if not count:
        return LatencySummary()
    window = min(count, lib.UH_LAT_CAP)
    samples = sorted(ffi.unpack(stats.lat_ring, window))
    return LatencySummary(
        count=count,
        min_us=stats.lat_min_ns / 1000,
        median_us=samples[len(samples) // 2] / 1000,
        p99_us=samples[min(len(samples) - 1, (len(samples) * 99) // 100)] / 1000,
        max_us=stats.lat_max_ns / 1000,
        mean_us=stats.lat_sum_ns / count / 1000,
    )


def _logged(rec: Any) -> LoggedEvent:
    kind = rec.event
    if kind == EventType.FORK:
        event: Any = ForkAdopted(int(rec.a), int(ffi.cast("int64_t", rec.b)))
    elif kind == EventType.REMAP:
        event = RemapEvent(rec.a, rec.b, rec.c)
    elif kind == EventType.REMOVE:
        event = RemoveEvent(rec.a, rec.b)
    elif kind == EventType.UNMAP:
        event = UnmapEvent(rec.a, rec.b)
    else:
        event = UnknownEvent(kind, rec.a.to_bytes(8, "little") + rec.b.to_bytes(8, "little"))
    return LoggedEvent(rec.uffd, event)
