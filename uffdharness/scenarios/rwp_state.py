"""Read-write protection (7.3) kept through what changes a page table besides an access:
mprotect(), GUP, fork() (with a pinned page too) and swap of a COW-shared page.

The uffd PTE bit of an RWP VMA reads as pagemap's uffd-wp bit (57), set while the page is
protected and cleared once an access (or the kernel in async mode) restores it; these
scenarios judge that bit and the faults. Facts from 7.3's mm/userfaultfd.c, mm/memory.c
(do_swap_page, copy_present_page) and the selftests' rwp-* cases.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .. import syscalls as sc
from ..abi import FaultFlag, Feature, RegisterMode
from ..memory import Region
from ..pagemap import read_entries, wp_pages
from ..pin import LongTermPin
from ..pin import unavailable_reason as pin_unavailable_reason
from .checks import Checks
from .context import Background, Context
from .model import ALL_KINDS, Observation, Skip
from .registry import scenario
from .rwp import blocked_access, expect_rwp_fault
from .wp import BLOCK_PROBE, EVENT_TIMEOUT, SEED
from .wp_fork import fork_and_inspect

PAGES = 2
PAGEOUT_ATTEMPTS = 100
ASYNC = Feature.RWP | Feature.RWP_ASYNC


def _protected(ctx: Context, features: Feature = Feature(0)) -> tuple[Region, Any]:
    """A populated region of PAGES pages, RWP-registered and protected."""
    region = ctx.region(PAGES)
    region.fill_indexed(SEED)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.RWP) | features)
    uffd.register(region, mode=RegisterMode.RWP)
    uffd.rwprotect(region)
    return region, uffd


@scenario(
    id="rwp-mprotect",
    title="RWP protection survives an mprotect() round trip",
    checks="after mprotect(PROT_NONE) and back to PROT_READ|PROT_WRITE, RWP-protected pages "
    "keep the uffd bit and a read still blocks with an RWP fault until unprotected; the "
    "data is intact (change_protection keeps PROT_NONE semantics on VM_UFFD_RWP, 7.3)",
    memory=ALL_KINDS,
    modes=RegisterMode.RWP,
)
def rwp_mprotect(ctx: Context) -> Observation:
    region, uffd = _protected(ctx)
    check = Checks({"pages": PAGES})
    check.expect("protected_before", wp_pages(region), list(range(PAGES)))
    region.mprotect(sc.PROT_NONE)
    region.mprotect(sc.PROT_RW)
    check.expect("protected_after_mprotect", wp_pages(region), list(range(PAGES)))
    reader, fault = blocked_access(uffd, region, 0, write=False)
    check.expect("read_blocked", not reader.finished(BLOCK_PROBE), True)
    expect_rwp_fault(check, "read_fault", fault, region, 0, FaultFlag.RWP)
    uffd.rwprotect(region, protect=False)
    check.expect("reader_woken", reader.finished(EVENT_TIMEOUT), True)
    check.expect("data_intact", region.find_indexed_mismatch(SEED), None)
    return check.observation(key="protection kept through mprotect")


@scenario(
    id="rwp-gup",
    title="GUP through RWP-protected pages in async mode",
    checks="a long-term GUP pin (io_uring fixed buffer) of an RWP-protected page in async "
    "mode succeeds: GUP follows the protnone PTE, the kernel restores the page with no "
    "message and clears its uffd bit, the other page stays protected, data intact (7.3)",
    memory=ALL_KINDS,
    modes=RegisterMode.RWP,
    features=Feature.RWP_ASYNC,
    hugepages=4,
)
def rwp_gup(ctx: Context) -> Observation:
    unavailable = pin_unavailable_reason()
    if unavailable:
        raise Skip(unavailable)
    region, uffd = _protected(ctx, ASYNC)
    check = Checks({"pages": PAGES})
    check.expect("protected_before", wp_pages(region), list(range(PAGES)))
    pinned = Background(LongTermPin, *region.span(0))
    check.expect("pin_finished", pinned.finished(EVENT_TIMEOUT), True)
    pin = pinned.value(0) if pinned.finished(0) and pinned.error is None else None
    check.expect("pin_error", None if pinned.error is None else str(pinned.error), None)
    check.expect("protected_after_pin", wp_pages(region), list(range(1, PAGES)))
    check.expect("messages", len(uffd.read_events(timeout=0)), 0)
    if pin is not None:
        pin.close()
    uffd.rwprotect(region, protect=False)
    check.expect("data_intact", region.find_indexed_mismatch(SEED), None)
    return check.observation(key="GUP resolved the protected page")


def _read_in_child(region: Region) -> dict[str, Any]:
    """In the forked child (async mode): protection before, a read of page 0, after."""
    before = wp_pages(region)
    head = region.read(0, 64)
    return {
        "wp_pages": before,
        "wp_pages_after_read": wp_pages(region),
        "read_ok": head == region.read(0, 64),
        "data_intact": region.find_indexed_mismatch(SEED) is None,
    }


def _fork_case(ctx: Context, pin: bool) -> dict[str, Any]:
    region = ctx.region(PAGES)
    region.fill_indexed(SEED)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.RWP) | ASYNC | Feature.EVENT_FORK)
    holder: list[LongTermPin] = []

    def protect() -> dict[str, Any]:
        if pin:  # before protecting: the pin write-faults the pages in
            holder.append(LongTermPin(*region.span(0)))
        uffd.register(region, mode=RegisterMode.RWP)
        uffd.rwprotect(region)
        return {}

    try:
        return fork_and_inspect(region, uffd, True, protect, _read_in_child)
    finally:
        for held in holder:
            held.close()


def _judge_fork(facts: dict[str, Any]) -> Checks:
    check = Checks(facts)
    check.expect("parent_wp_pages", facts["parent_wp_pages"], list(range(PAGES)))
    if check.expect("child", facts["child"], "ok"):
        # EVENT_FORK: the child's VMA stays registered, its PTEs protnone + uffd bit
        check.expect("child_wp_pages", facts["child_wp_pages"], list(range(PAGES)))
        # the read restored page 0 through the RWP path (async: no message), so its bit
        # went; page 1 was never touched
        check.expect("child_wp_pages_after_read", facts["child_wp_pages_after_read"], [1])
        check.expect("child_data_intact", facts["child_data_intact"], True)
    check.expect("fork_events", facts.get("fork_events"), 1)
    check.expect("parent_wp_pages_after_fork", facts["parent_wp_pages_after_fork"], [0, 1])
    return check


@scenario(
    id="rwp-fork",
    title="RWP protection is inherited across fork() with EVENT_FORK",
    checks="with EVENT_FORK the child's copy of an RWP-protected range keeps the uffd bit "
    "(protnone) on every page and its read is resolved through the RWP path in async mode, "
    "clearing only that page's bit, data intact; the parent keeps its protection (7.3)",
    memory=ALL_KINDS,
    modes=RegisterMode.RWP,
    features=Feature.RWP_ASYNC | Feature.EVENT_FORK,
    hugepages=6,
)
def rwp_fork(ctx: Context) -> Observation:
    check = _judge_fork(_fork_case(ctx, pin=False))
    return check.observation(
        key=f"child after read: {check.facts.get('child_wp_pages_after_read')}"
    )


@scenario(
    id="rwp-fork-pin",
    title="RWP protection of a pinned anonymous page across fork()",
    checks="fork() copies a long-term-pinned (io_uring) RWP-protected anonymous page for the "
    "child at once (copy_present_page), which must restore PAGE_NONE on top of the uffd bit: "
    "the child's page is protected and its read resolves through the RWP path (7.3)",
    memory=("anon",),
    modes=RegisterMode.RWP,
    features=Feature.RWP_ASYNC | Feature.EVENT_FORK,
)
def rwp_fork_pin(ctx: Context) -> Observation:
    unavailable = pin_unavailable_reason()
    if unavailable:
        raise Skip(unavailable)
    check = _judge_fork(_fork_case(ctx, pin=True))
    return check.observation(
        key=f"child after read: {check.facts.get('child_wp_pages_after_read')}"
    )


@scenario(
    id="rwp-swap-cow",
    title="RWP on a COW-shared anonymous page through swap",
    checks="a COW-shared (forked, non-exclusive) anonymous page RWP-protected and swapped "
    "out keeps tracking: the write that swaps it in raises an RWP|WRITE fault before the "
    "COW (do_swap_page restores PAGE_NONE), and completes once unprotected (7.3; needs swap)",
    memory=("anon",),
    modes=RegisterMode.RWP,
)
def rwp_swap_cow(ctx: Context) -> Observation:
    ctx.require_swap()
    region = ctx.region(PAGES)
    region.fill_indexed(SEED)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.RWP))
    uffd.register(region, mode=RegisterMode.RWP)
    uffd.rwprotect(region)
    # Swapped out while still exclusive: MADV_PAGEOUT skips a folio mapped twice. A hot
    # page may only be rotated on a reclaim pass, hence the retries.
    check = Checks({"pages": PAGES})
    swapped = False
    for _attempt in range(PAGEOUT_ATTEMPTS):
        sc.madvise(*region.span(0), sc.MADV_PAGEOUT)
        swapped = read_entries(region.addr, region.page_size)[0].swapped
        if swapped:
            break
        time.sleep(0.01)
    check.fact("swapped_out", swapped)
    if not swapped:
        raise Skip("MADV_PAGEOUT did not swap the page out (swap full or refused)")
    # fork() now: the child's copy of the swap entry makes the page non-exclusive (no
    # EVENT_FORK: the child's VMA is not registered).
    release_w, pid = _sharing_child(region)
    try:
        writer, fault = blocked_access(uffd, region, 0, write=True)
        check.expect("write_blocked", not writer.finished(BLOCK_PROBE), True)
        expect_rwp_fault(check, "write_fault", fault, region, 0, FaultFlag.RWP | FaultFlag.WRITE)
        uffd.rwprotect(region, protect=False)
        check.expect("writer_woken", writer.finished(EVENT_TIMEOUT), True)
        check.expect("page_1_intact", region.find_indexed_mismatch(SEED, 1, 1), None)
        return check.observation(key="RWP fault before COW on swap-in")
    finally:
        _release_child(release_w, pid)


def _sharing_child(region: Region) -> tuple[int, int]:
    """Fork a child that only waits, so the region's anonymous pages are COW-shared
    (non-exclusive); returns (its release pipe, its pid)."""
    release_r, release_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(release_w)  # else its own copy keeps the read from ever seeing EOF
            os.read(release_r, 1)
        finally:
            os._exit(0)
    os.close(release_r)
    return release_w, pid


def _release_child(release_w: int, pid: int) -> None:
    os.close(release_w)
    os.waitpid(pid, 0)
