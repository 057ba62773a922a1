"""UFFD_FEATURE_SIGBUS beyond the first missing fault: write-protected pages, UFFDIO_COPY_MODE_WP,
and the retry after a SIGBUS in the same process and in forked children.

Each faulting access here goes through Region.access_catching_sigbus: the SIGBUS is caught
in C (sigsetjmp) in the thread that made the access, so the scenario resolves the page and
retries the very same access in the same process, as a SIGBUS-driven handler does.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from .._native import ffi, lib
from ..abi import CopyMode, Feature, RegisterMode
from ..events import ForkEvent, PagefaultEvent
from ..isolation import run_in_child, wait_or_kill
from ..memory import BUS_ADRERR, CaughtAccess, Region
from ..pagemap import wp_pages
from ..uffd import Userfaultfd
from .checks import Checks
from .context import Background, Context, next_event
from .model import ALL_KINDS, Observation
from .registry import scenario
from .wp import (
    BLOCK_PROBE,
    EVENT_TIMEOUT,
    PAYLOAD,
    UNPROTECT,
    fault_facts,
    is_wp_write_at,
)

PATTERN = b"sigbus-pattern.\n"
SEED = 0x51B5
CHILD_TIMEOUT = 5.0


def _access(region: Region, offset: int, *, write: bool = False) -> CaughtAccess | None:
    """One access with SIGBUS caught, made in a Background thread: None when it is still
    blocked in a fault after EVENT_TIMEOUT (a kernel that queued a message instead of
    raising SIGBUS); closing the uffd at the end of the scenario releases it."""
    worker = Background(region.access_catching_sigbus, offset, write=write)
    return worker.value(0) if worker.finished(EVENT_TIMEOUT) else None


def _access_facts(access: CaughtAccess | None, region: Region, offset: int) -> dict[str, Any]:
    """What an access did: "SIGBUS" (with whether si_code/si_addr name the access), "ok",
    or "blocked" in a fault."""
    if access is None:
        return {"outcome": "blocked"}
    if not access.sigbus:
        return {"outcome": "ok"}
    return {
        "outcome": "SIGBUS",
        "si_code_is_BUS_ADRERR": access.code == BUS_ADRERR,
        "si_addr_offset": access.address - region.addr,
        "at_access": access.address == region.addr + offset,
    }


def _expect_sigbus(
    check: Checks, name: str, access: CaughtAccess | None, region: Region, offset: int = 0
) -> None:
    """A SIGBUS with si_code BUS_ADRERR at the accessed address (force_sig_fault() from
    the fault path when handle_userfault() returns VM_FAULT_SIGBUS)."""
    facts = _access_facts(access, region, offset)
    wanted = {
        "outcome": "SIGBUS",
        "si_code_is_BUS_ADRERR": True,
        "si_addr_offset": offset,
        "at_access": True,
    }
    check.expect(name, facts, wanted)


def _expect_queued_nothing(check: Checks, name: str, uffd: Userfaultfd) -> None:
    """Under UFFD_FEATURE_SIGBUS handle_userfault() returns before queueing a message."""
    queued = uffd.read_events(timeout=0)
    check.expect(name, [type(event).__name__ for event in queued], [])


def _expect_wp_pages(check: Checks, ctx: Context, name: str, region: Region, wanted: list[int]):
    """The pages pagemap shows uffd-wp: judged where pagemap reports the bit (5.14), a fact
    before (bit 57 then reads 0 without an error)."""
    if ctx.system.pagemap_uffd_wp:
        check.expect(name, wp_pages(region), wanted)
    else:
        check.fact(name, "pagemap does not report uffd-wp (5.14)")


def _pattern_page(region: Region) -> bytes:
    return PATTERN * (region.page_size // len(PATTERN))


# --- sigbus-wp ---------------------------------------------------------------------------------


def _protected_write(ctx: Context, modes: RegisterMode) -> Checks:
    """SIGBUS uffd: a page copied in and write-protected reads fine, a write raises SIGBUS,
    and after UFFDIO_WRITEPROTECT clears the protection the same write completes."""
    region = ctx.region(1)
    uffd = ctx.uffd(Feature.SIGBUS | ctx.mode_features(modes))
    uffd.register(region, mode=modes)
    uffd.copy(region.addr, _pattern_page(region))
    uffd.writeprotect(region)
    check = Checks()
    _expect_wp_pages(check, ctx, "wp_pages_after_protect", region, [0])
    read = _access(region, 0)
    check.expect("read", _access_facts(read, region, 0), {"outcome": "ok"})
    _expect_sigbus(check, "write", _access(region, 0, write=True), region)
    _expect_queued_nothing(check, "queued_after_write", uffd)
    uffd.writeprotect(region, mode=UNPROTECT)
    retried = _access(region, 0, write=True)
    check.expect("write_after_unprotect", _access_facts(retried, region, 0), {"outcome": "ok"})
    check.expect("data_intact", region.verify(PATTERN), True)
    return check


def _copy_mode_wp(ctx: Context, modes: RegisterMode) -> Checks:
    """Plain uffd: UFFDIO_COPY_MODE_WP installs the page write-protected, so the first
    write raises a WP|WRITE fault and blocks until the protection is cleared."""
    region = ctx.region(1)
    uffd = ctx.uffd(ctx.mode_features(modes))
    uffd.register(region, mode=modes)
    copied = uffd.copy(region.addr, _pattern_page(region), mode=CopyMode.WP)
    check = Checks({"bytes_copied": copied})
    _expect_wp_pages(check, ctx, "wp_pages_after_copy", region, [0])
    writer = Background(region.write, PAYLOAD, 0)
    fault = next_event(uffd, timeout=EVENT_TIMEOUT)
    fault = fault if isinstance(fault, PagefaultEvent) else None
    blocked = not writer.finished(BLOCK_PROBE)
    uffd.writeprotect(region, mode=UNPROTECT)
    woken = writer.finished(EVENT_TIMEOUT)
    check.expect_that(
        "write_fault",
        fault_facts(fault, region),
        is_wp_write_at(fault, region, 0),
        "a WRITE+WP fault at page 0",
    )
    check.expect("writer_blocked_while_protected", blocked, True)
    check.expect("writer_woken_by_unprotect", woken, True)
    check.expect("written_data_ok", region.read(0, len(PAYLOAD)) == PAYLOAD, True)
    rest = region.verify(PATTERN, len(PAYLOAD), region.page_size - len(PAYLOAD))
    check.expect("rest_of_page_ok", rest, True)
    return check


def _copy_mode_wp_sigbus(ctx: Context, modes: RegisterMode) -> Checks:
    """SIGBUS uffd: a page installed by UFFDIO_COPY_MODE_WP raises SIGBUS on the first write."""
    region = ctx.region(1)
    uffd = ctx.uffd(Feature.SIGBUS | ctx.mode_features(modes))
    uffd.register(region, mode=modes)
    uffd.copy(region.addr, _pattern_page(region), mode=CopyMode.WP)
    check = Checks()
    _expect_wp_pages(check, ctx, "wp_pages_after_copy", region, [0])
    read = _access(region, 0)
    check.expect("read", _access_facts(read, region, 0), {"outcome": "ok"})
    _expect_sigbus(check, "write", _access(region, 0, write=True), region)
    _expect_queued_nothing(check, "queued_after_write", uffd)
    check.expect("data_intact", region.verify(PATTERN), True)
    return check


@scenario(
    id="sigbus-wp",
    title="UFFD_FEATURE_SIGBUS on write-protected pages; UFFDIO_COPY_MODE_WP",
    checks="with SIGBUS (4.14) on a MISSING|WP range a write to a write-protected page "
    "raises SIGBUS (BUS_ADRERR at the address) and queues no message, and completes once "
    "UFFDIO_WRITEPROTECT clears the protection; UFFDIO_COPY with UFFDIO_COPY_MODE_WP "
    "installs a write-protected page (pagemap uffd-wp; a write raises WP|WRITE, or SIGBUS "
    "under FEATURE_SIGBUS) (WP: 5.7 anon, 5.19 shmem and hugetlbfs)",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING | RegisterMode.WP,
    features=Feature.SIGBUS,
)
def sigbus_wp(ctx: Context) -> Observation:
    modes = RegisterMode.MISSING | RegisterMode.WP
    check = Checks()
    cases = {
        "protected_write": _protected_write,
        "copy_mode_wp": _copy_mode_wp,
        "copy_mode_wp_sigbus": _copy_mode_wp_sigbus,
    }
    for name, case in cases.items():
        check.nest(name, case(ctx, modes))
    write = check.facts["protected_write"]["write"]["outcome"]
    after = check.facts["copy_mode_wp"]["wp_pages_after_copy"]
    return check.observation(key=f"protected write -> {write}, COPY_MODE_WP wp pages={after}")


# --- sigbus-retry ------------------------------------------------------------------------------


def _retry(ctx: Context, region: Region, uffd: Userfaultfd) -> Checks:
    """Pages 0 and 1: the read raises SIGBUS, the page is resolved (page 0 by UFFDIO_COPY,
    page 1 by UFFDIO_ZEROPAGE, or a COPY of zeros on hugetlbfs, which has no ZEROPAGE), and
    the same read retried raises no second SIGBUS and sees the resolved data."""
    check = Checks()
    size = region.page_size
    resolutions = {0: ("UFFDIO_COPY", PATTERN)}
    zero_op = "UFFDIO_COPY of zeros" if ctx.spec.is_hugetlb else "UFFDIO_ZEROPAGE"
    resolutions[1] = (zero_op, b"\0")
    for page, (op, content) in resolutions.items():
        offset = page * size
        part = Checks({"resolved_by": op})
        _expect_sigbus(part, "first_read", _access(region, offset), region, offset)
        _expect_queued_nothing(part, "queued_after_sigbus", uffd)
        if op == "UFFDIO_ZEROPAGE":
            uffd.zeropage(*region.span(page))
        else:
            uffd.copy(region.page_addr(page), (content * size)[:size])
        retried = _access(region, offset)
        part.expect("retried_read", _access_facts(retried, region, offset), {"outcome": "ok"})
        part.expect("retried_value", retried.value if retried else None, content[0])
        part.expect("page_holds_resolved_data", region.verify(content, offset, size), True)
        check.nest(f"page{page}", part)
    return check


def _child_reads_zero(region: Region, page: int) -> dict[str, Any]:
    access = region.access_catching_sigbus(page * region.page_size)
    zeros = None if access.sigbus else region.verify(b"\0", page * region.page_size)
    return {"sigbus": access.sigbus, "reads_zero": zeros}


def _child_without_event_fork(ctx: Context, region: Region, uffd: Userfaultfd) -> Checks:
    """Without EVENT_FORK, dup_userfaultfd() resets the child's copy of the VMA to
    unregistered: the child's touch of a missing page is an ordinary fault (zeros), no
    SIGBUS, and nothing reaches the parent's uffd."""
    page = 2
    outcome = run_in_child(_child_reads_zero, region, page, timeout=CHILD_TIMEOUT)
    check = Checks()
    check.expect("child", outcome.status, "ok")
    if outcome.signal:
        check.fact("signal", signal.Signals(outcome.signal).name)
    check.expect("child_access", outcome.value, {"sigbus": False, "reads_zero": True})
    _expect_queued_nothing(check, "queued_on_parent_uffd", uffd)
    return check


def _child_with_event_fork(ctx: Context) -> Checks:
    """With EVENT_FORK the child's VMA is registered on a new uffd that inherits the
    parent's features (dup_userfaultfd(): ctx->features = octx->features), SIGBUS included:
    the child's touch of a missing page kills it with SIGBUS, and neither the parent's uffd
    nor the child's gets a fault message; the parent's gets only the fork event."""
    region = ctx.region(2)
    features = Feature.SIGBUS | Feature.EVENT_FORK | ctx.mode_features(RegisterMode.MISSING)
    uffd = ctx.uffd(features)
    uffd.register(region)
    uffd.copy(region.addr, _pattern_page(region))
    read_end, write_end = os.pipe()
    check = Checks()
    try:
        # Forked from C with the GIL released: fork() sleeps until the event is read here.
        base = ffi.cast("char *", region.addr)
        forker = Background(lib.uh_fork_toucher, base, 2, region.page_size, SEED, write_end)
        event = next_event(uffd, timeout=EVENT_TIMEOUT)
        pid = forker.value(EVENT_TIMEOUT)
        check.expect("event", type(event).__name__ if event else None, ForkEvent.__name__)
        status = wait_or_kill(pid, CHILD_TIMEOUT) if pid > 0 else None
    finally:
        os.close(read_end)
        os.close(write_end)
    killed_by = None
    if status is not None and os.WIFSIGNALED(status):
        killed_by = signal.Signals(os.WTERMSIG(status)).name
    elif status is not None:
        killed_by = f"exit {os.WEXITSTATUS(status)}"
    check.expect("child_ended_by", killed_by, "SIGBUS")
    _expect_queued_nothing(check, "queued_on_parent_uffd", uffd)
    if isinstance(event, ForkEvent):
        with event.uffd as child_uffd:
            _expect_queued_nothing(check, "queued_on_child_uffd", child_uffd)
    check.expect("parent_page_intact", region.verify(PATTERN, 0, region.page_size), True)
    return check


@scenario(
    id="sigbus-retry",
    title="UFFD_FEATURE_SIGBUS: retry after the signal, and forked children",
    checks="with SIGBUS (4.14) a missing page raises SIGBUS and queues nothing; once "
    "UFFDIO_COPY/ZEROPAGE resolves it the same access retried in the same process gets no "
    "second signal and reads the resolved data; a child forked with EVENT_FORK inherits "
    "SIGBUS on its new uffd (killed by SIGBUS, no message on either uffd), one forked "
    "without it has the registration dropped (reads zeros)",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    features=Feature.SIGBUS | Feature.EVENT_FORK,
    hugepages=5,
)
def sigbus_retry(ctx: Context) -> Observation:
    region = ctx.region(3)
    uffd = ctx.uffd(Feature.SIGBUS | ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    check = Checks()
    check.nest("retry", _retry(ctx, region, uffd))
    check.nest("child_without_event_fork", _child_without_event_fork(ctx, region, uffd))
    check.nest("child_with_event_fork", _child_with_event_fork(ctx))
    retried = check.facts["retry"]["page0"]["retried_read"]["outcome"]
    child = check.facts["child_with_event_fork"]["child_ended_by"]
    return check.observation(key=f"retry={retried} child(EVENT_FORK)={child}")
