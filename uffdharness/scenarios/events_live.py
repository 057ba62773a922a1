"""Non-cooperative events met by a live FaultHandler while it serves faults, as a
userfaultfd monitor (CRIU's lazy pages, a VMM's post-copy) meets them: fork, mremap and
MADV_DONTNEED/MADV_REMOVE of the served memory, each with the data verified.

Every access here runs in a Background thread or a child forked from C, never with the
GIL held, so the thread engine's Python thread can serve it.
"""

from __future__ import annotations

import os
import select
import struct
import time
from collections.abc import Callable

from .. import syscalls as sc
from .._native import ffi, lib
from ..abi import Feature, RegisterMode
from ..events import RemapEvent, RemoveEvent
from ..handler import FaultHandler, FillIndexed, LoggedEvent, Unprotect
from ..isolation import wait_or_kill
from ..maps import read_smaps_range
from ..memory import PAGE_SIZE, Region
from ..pagemap import wp_pages
from .checks import Checks
from .context import Background, Context
from .model import ALL_KINDS, Observation
from .registry import scenario

SEED = 0xE7E1
ENGINES = ("native", "thread")  # the process engine's range table lives in its helper
CALL_TIMEOUT = 3.0  # a call blocked on an event or a fault the handler must serve
CHILD_TIMEOUT = 5.0


def _pages(ctx: Context) -> int:
    return 4 if ctx.spec.is_hugetlb else 8


def _ran(check: Checks, name: str, call: Callable, *args, **kwargs) -> bool:
    """Run ``call`` in a Background thread; a fact ``name`` says whether it returned in
    time (a fault nobody served, an event nobody read, leaves it blocked)."""
    worker = Background(call, *args, **kwargs)
    finished = worker.finished(CALL_TIMEOUT)
    if finished:
        worker.value(0)
    check.expect(name, finished, True)
    return finished


def _fork(ctx: Context, engine: str) -> Checks:
    """EVENT_FORK: the handler adopts the child's uffd from the fork event and serves the
    child's missing faults there; the child checks every page's content itself."""
    pages = _pages(ctx)
    parent_pages = pages // 2
    region = ctx.region(pages)
    uffd = ctx.uffd(Feature.EVENT_FORK | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    check = Checks()
    read_end, write_end = os.pipe()
    try:
        with FaultHandler(uffd, FillIndexed(SEED), region, engine=engine) as handler:
            _ran(check, "parent_touch_served", region.touch, range(parent_pages))
            # fork() sleeps until the handler has read the event: fork from C, GIL released.
            # The child touches every page and reports the first wrong byte, or -1.
            base = ffi.cast("char *", region.addr)
            forker = Background(lib.uh_fork_toucher, base, pages, region.page_size, SEED, write_end)
            pid = forker.value(CALL_TIMEOUT)
            status = wait_or_kill(pid, CHILD_TIMEOUT) if pid > 0 else None
            ready, _, _ = select.select([read_end], [], [], 0)
            report = os.read(read_end, 8) if ready else b""
    finally:
        os.close(read_end)
        os.close(write_end)
    stats = handler.stats
    exited = status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    check.expect("child_exited_0", exited, True)
    first_bad = struct.unpack("q", report)[0] if len(report) == 8 else None
    check.expect("child_first_wrong_offset", first_bad, -1)
    parent_bad = region.find_indexed_mismatch(SEED, 0, parent_pages)
    check.expect("parent_first_wrong_offset", parent_bad, None)
    check.expect("fork_events", stats.events["fork"], 1)
    check.expect("uffds_adopted", stats.uffds_adopted, 1)
    # The parent's pages reach the child by fork (private) or the page cache (shared): only
    # the others fault, on the child's uffd.
    check.expect("missing_faults", stats.faults.missing, pages)
    check.expect("handler_errors", stats.errors, {})
    region.close()
    return check


def _remap(ctx: Context, engine: str) -> Checks:
    """EVENT_REMAP mid-run: half the pages served, the area mremapped, the rest served at
    the new address from the right source offsets (the handler's range follows the event)."""
    pages = _pages(ctx)
    region = ctx.region(pages)
    # Address space to move into, aligned for hugetlb (mremap needs huge-page alignment).
    space = ctx.region(2 * region.length // PAGE_SIZE, kind="anon", align=region.page_size)
    destination = space.addr + region.length
    uffd = ctx.uffd(Feature.EVENT_REMAP | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    old, length = region.addr, region.length
    check = Checks()
    with FaultHandler(uffd, FillIndexed(SEED), region, engine=engine) as handler:
        _ran(check, "touch_before_served", region.touch, range(pages // 2))
        flags = sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED
        _ran(check, "mremap_returned", region.mremap, length, flags, destination)
        check.expect("moved_to_destination", region.addr == destination, True)
        _ran(check, "touch_after_served", region.touch)
        served = handler.served_ranges()
    stats = handler.stats
    # Offsets from the destination, so the facts read the same on every run.
    check.expect("served_ranges", [_from(destination, r) for r in served], [[0, length, 0]])
    logged = _logged(stats.events_log)
    check.expect(
        "events_log", logged, _logged([LoggedEvent(0, RemapEvent(old, destination, length))])
    )
    check.expect("missing_faults", stats.faults.missing, pages)
    check.expect("first_wrong_offset", region.find_indexed_mismatch(SEED), None)
    check.expect("handler_errors", stats.errors, {})
    region.close()
    space.close()
    return check


def _remap_wp(ctx: Context, engine: str) -> Checks | None:
    """The selftests' events-wp: registered MISSING|WP, the handler resolves missing faults
    with UFFDIO_COPY_MODE_WP, so every page arrives write-protected, across an EVENT_REMAP
    mid-run; then every write is a WP fault the handler resolves by unprotecting. None
    where the kind or kernel has no uffd-wp."""
    features = ctx.probe_features(RegisterMode.MISSING | RegisterMode.WP)
    if features is None:
        return None
    pages = _pages(ctx)
    region = ctx.region(pages)
    space = ctx.region(2 * region.length // PAGE_SIZE, kind="anon", align=region.page_size)
    destination = space.addr + region.length
    uffd = ctx.uffd(Feature.EVENT_REMAP | features)
    uffd.register(region, mode=RegisterMode.MISSING | RegisterMode.WP)
    check = Checks()
    visible = ctx.system.pagemap_uffd_wp  # pagemap bit 57 (5.14): else only the faults say
    policy = FillIndexed(SEED, protect=True) | Unprotect()
    with FaultHandler(uffd, policy, region, engine=engine) as handler:
        _ran(check, "read_before_served", region.touch, range(pages // 2))
        flags = sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED
        _ran(check, "mremap_returned", region.mremap, region.length, flags, destination)
        _ran(check, "read_after_served", region.touch)
        if visible:
            # EVENT_REMAP keeps the registration, so mremap keeps the bits of moved pages
            check.expect("wp_pages_after_reads", wp_pages(region), list(range(pages)))
        _ran(check, "write_served", region.touch, write=True)
        if visible:
            check.expect("wp_pages_after_writes", wp_pages(region), [])
    stats = handler.stats
    check.expect("missing_faults", stats.faults.missing, pages)
    check.expect("wp_faults", stats.faults.wp, pages)
    check.expect("first_wrong_offset", region.find_indexed_mismatch(SEED), None)
    check.expect("handler_errors", stats.errors, {})
    region.close()
    space.close()
    return check


def _from(base: int, served: tuple[int, int, int]) -> list[int]:
    start, length, source_offset = served
    return [start - base, length, source_offset]


def _logged(log) -> list[str]:
    """The handler's event log as text (the events' own reprs)."""
    return [f"uffd {entry.uffd}: {entry.event}" for entry in log]


def _registered_pages(region: Region) -> list[int]:
    """Pages of ``region`` whose VMA is registered for missing faults (smaps "um")."""
    pages = []
    for vma in read_smaps_range(region.addr, region.end):
        if vma.uffd_missing:
            first = max(vma.start, region.addr)
            pages += range(
                region.page_index(first), region.page_index(min(vma.end, region.end) - 1) + 1
            )
    return pages


def _remove(ctx: Context, engine: str) -> Checks:
    """EVENT_REMOVE handled by unregistering the removed range: afterwards its pages read
    zero with no fault, and the rest keep what the handler copied."""
    pages = _pages(ctx)
    region = ctx.region(pages)
    uffd = ctx.uffd(Feature.EVENT_REMOVE | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    first, count = 1, 2
    offset, length = first * region.page_size, count * region.page_size
    removed = list(range(first, first + count))
    kept = [page for page in range(pages) if page not in removed]
    check = Checks({"advice": sc.ADVICE_NAMES[ctx.spec.drop_advice]})
    handler = FaultHandler(uffd, FillIndexed(SEED), region, engine=engine, on_remove="unregister")
    with handler:
        _ran(check, "touch_served", region.touch)
        # userfaultfd_remove() makes madvise() wait until the handler has read the event.
        _ran(check, "madvise_returned", region.madvise, ctx.spec.drop_advice, offset, length)
        deadline = time.monotonic() + CALL_TIMEOUT
        while handler.stats.events["remove"] < 1 and time.monotonic() < deadline:
            time.sleep(0.002)
        faults_before = handler.stats.faults.missing
        check.expect("registered_pages_after_remove", _registered_pages(region), kept)
        zeros = Background(region.verify, b"\0", offset, length)
        check.expect("removed_pages_read_zero", zeros.value(CALL_TIMEOUT), True)
        check.expect("faults_after_remove", handler.stats.faults.missing - faults_before, 0)
        served = handler.served_ranges()
    stats = handler.stats
    check.expect("remove_events", stats.events["remove"], 1)
    expected = LoggedEvent(0, RemoveEvent(region.addr + offset, region.addr + offset + length))
    check.expect("events_log", _logged(stats.events_log), _logged([expected]))
    check.expect("served_pages", sum(r[1] for r in served) // region.page_size, len(kept))
    intact = all(region.find_indexed_mismatch(SEED, page, 1) is None for page in kept)
    check.expect("kept_pages_ok", intact, True)
    check.expect("missing_faults", stats.faults.missing, pages)
    check.expect("handler_errors", stats.errors, {})
    region.close()
    return check


@scenario(
    id="events-live",
    title="Fork, remap and remove events met by a live fault handler",
    checks="a FaultHandler serving missing faults follows EVENT_FORK (the child's faults "
    "served on the new uffd), EVENT_REMAP (faults served at the new address, 5.16 on "
    "hugetlb) and EVENT_REMOVE (the range unregistered, its pages then read zero) (4.11), "
    "as the kernel selftests' events test does, data verified; and, where the kind has "
    "uffd-wp, the remap case registered MISSING|WP with pages resolved by "
    "UFFDIO_COPY_MODE_WP (protected, then each write a WP fault), as events-wp does",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    probes=RegisterMode.MISSING | RegisterMode.WP,
    features=Feature.EVENT_FORK | Feature.EVENT_REMAP | Feature.EVENT_REMOVE,
    uses=("mremap", "drop"),
    hugepages=6,
)
def events_live(ctx: Context) -> Observation:
    check = Checks()
    cases = {"fork": _fork, "remap": _remap, "remove": _remove, "remap_wp": _remap_wp}
    for engine in ENGINES:
        for name, case in cases.items():
            result = case(ctx, engine)
            if result is not None:
                check.nest(f"{name}_{engine}", result)
    failed = sorted({problem.split(".")[0] for problem in check.problems})
    return check.observation(key="all served, data ok" if check.ok else f"failed: {failed}")
