"""Write-protect mode: faults, PTE markers, async tracking, and the uffd-wp bit's lifetime
across close(), mremap() and fork().

The uffd-wp state of each page is read back from /proc/self/pagemap bit 57, so every
scenario reports what the page tables hold, not only what faults were seen.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from typing import Any

from .. import syscalls as sc
from ..abi import (
    FaultFlag,
    Feature,
    PageCategory,
    RegisterMode,
    ScanFlag,
    WriteProtectMode,
    flag_names,
)
from ..errors import UffdError
from ..events import ForkEvent, PagefaultEvent
from ..isolation import run_in_child
from ..maps import read_smaps_range
from ..memory import MemoryKind, Region, allocate
from ..pagemap import Pagemap, PagemapFlag
from ..system import kernel_warned
from ..uffd import Userfaultfd
from .context import Background, Context, next_event
from .model import ALL_KINDS, SHARED_KINDS, KnownBug, Observation, Skip
from .registry import scenario

SEED = 0x3A11
UNPROTECT = WriteProtectMode(0)
WP_WRITE = FaultFlag.WP | FaultFlag.WRITE
# Waits end as soon as the awaited thing happens; the limits only matter on a broken
# kernel, so they are generous enough for a slow (TCG) guest.
EVENT_TIMEOUT = 3.0  # how long a fault that must come may take
BLOCK_PROBE = 0.05  # how long a write that must block is watched before we call it blocked
FINISH_TIMEOUT = 3.0  # how long a write that must not block may take
PAYLOAD = (b"written-while-protected." * 3)[:64]


# --- what the page tables say ------------------------------------------------------------------


def pagemap_view(region: Region) -> list[str]:
    """Pagemap flags of each page of ``region``, e.g. "EXCLUSIVE+UFFD_WP+PRESENT"; "" for
    an empty PTE. A uffd-wp PTE marker reads "UFFD_WP+SWAPPED" (a swap-format entry) on
    small pages and plain "UFFD_WP" on hugetlb."""
    with Pagemap() as pagemap:
        entries = pagemap.entries(region.addr, region.length, region.page_size)
    return ["+".join(entry.names()) for entry in entries]


def wp_pages(region: Region) -> list[int]:
    """Indexes of the pages whose pagemap entry carries uffd-wp (bit 57)."""
    with Pagemap() as pagemap:
        mask = pagemap.flag_mask(PagemapFlag.UFFD_WP, region.addr, region.length, region.page_size)
    return [i for i in range(region.pages) if mask >> i & 1]


def uffd_vm_flags(start: int, end: int) -> list[str]:
    """The smaps VmFlags marking uffd registration (um, uw, ui) on VMAs in [start, end)."""
    flags = {f for vma in read_smaps_range(start, end) for f in vma.vm_flags}
    return sorted(flags & {"um", "uw", "ui"})


PM_UFFD_WP_SINCE = "5.14"  # "mm/pagemap: export uffd-wp protection information"
_pagemap_wp_probe: bool | None = None


def pagemap_reports_uffd_wp() -> bool:
    """Whether this kernel's pagemap carries the uffd-wp bit (57, 5.14): probed once on a
    protected anonymous page, since older kernels leave the bit 0 without any error."""
    global _pagemap_wp_probe
    if _pagemap_wp_probe is None:
        region = allocate(MemoryKind.ANON, 1)
        try:
            region.touch(0, write=True)
            with Userfaultfd.open(Feature.PAGEFAULT_FLAG_WP) as uffd:
                uffd.register(region, mode=RegisterMode.WP)
                uffd.writeprotect(region)
                _pagemap_wp_probe = wp_pages(region) == [0]
        finally:
            region.close()
    return _pagemap_wp_probe


def require_pagemap_uffd_wp() -> None:
    if not pagemap_reports_uffd_wp():
        raise Skip(
            f"pagemap does not report uffd-wp (bit 57, added in {PM_UFFD_WP_SINCE}): "
            "the page-table state this scenario judges is invisible"
        )


def fault_facts(fault: PagefaultEvent | None, region: Region) -> dict[str, Any] | None:
    if fault is None:
        return None
    inside = region.addr <= fault.address < region.end
    return {
        "flags": flag_names(fault.flags),
        "page": region.page_index(fault.address) if inside else None,
        "offset_from_region": fault.address - region.addr,
    }


def _indexed_source(ctx: Context, region: Region) -> Region:
    """Anonymous memory holding fill_indexed(SEED) laid out at ``region``'s page size."""
    source = ctx.region(region.length // MemoryKind.ANON.page_size, kind=MemoryKind.ANON)
    source.page_size = region.page_size
    source.fill_indexed(SEED)
    return source


def _pages(ctx: Context, small: int, huge: int) -> int:
    return huge if ctx.memory.is_hugetlb else small


def _protected_pages(ctx: Context, pages: int) -> list[int]:
    """Pages carrying uffd-wp after protecting a range whose last page is unpopulated:
    anon needs WP_UNPOPULATED (not used here) for the empty one; shmem and hugetlbfs
    always install a marker there (5.19)."""
    return list(range(pages - 1 if ctx.memory is MemoryKind.ANON else pages))


def _fault_or_finish(uffd: Userfaultfd, worker: Background, timeout: float):
    """The first message on ``uffd``, or None as soon as ``worker`` finished without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if uffd.wait(0.005):
            return next_event(uffd, timeout=0)
        if worker.finished(0):
            return next_event(uffd, timeout=0) if uffd.wait(0) else None
    return None


# --- wp-basic ---------------------------------------------------------------------------------


@scenario(
    id="wp-basic",
    title="Write-protect faults on populated memory",
    checks="on a MISSING|WP range populated with UFFDIO_COPY and write-protected, a write "
    "raises one fault flagged WP|WRITE at the page address and blocks until "
    "UFFDIO_WRITEPROTECT clears the protection; a read does not fault (5.7 anon, 5.19 "
    "shmem and hugetlbfs)",
    memory=ALL_KINDS,
)
def wp_basic(ctx: Context) -> Observation:
    pages = _pages(ctx, 4, 3)
    region = ctx.region(pages)
    uffd = ctx.uffd(ctx.mode_features("missing", "wp"))
    uffd.register(region, mode=RegisterMode.MISSING | RegisterMode.WP)
    source = _indexed_source(ctx, region)
    copied = uffd.copy(region.addr, source.addr, region.length)
    uffd.writeprotect(region)
    protected = wp_pages(region)

    target, read_page = 1, 2
    writer = Background(region.write, PAYLOAD, target * region.page_size)
    fault = next_event(uffd, timeout=EVENT_TIMEOUT)
    writer_blocked = not writer.finished(BLOCK_PROBE)
    reader = Background(region.read, read_page * region.page_size, 64)
    read_finished = reader.finished(FINISH_TIMEOUT)
    read_events = uffd.read_events(timeout=0.05)
    try:
        uffd.writeprotect(*region.span(target), mode=UNPROTECT)
    finally:
        if not read_finished:  # a read that faulted: free it before judging
            uffd.writeprotect(region, mode=UNPROTECT)
    writer_woken = writer.finished(EVENT_TIMEOUT)
    protected_after = wp_pages(region)

    written_ok = region.read(target * region.page_size, len(PAYLOAD)) == PAYLOAD
    rest_offset = target * region.page_size + len(PAYLOAD)
    rest_ok = region.read(rest_offset, region.page_size - len(PAYLOAD)) == source.read(
        rest_offset, region.page_size - len(PAYLOAD)
    )
    others = [i for i in range(pages) if i != target]
    others_ok = all(region.find_indexed_mismatch(SEED, i, 1) is None for i in others)
    read_ok = read_finished and reader.value(0) == source.read(read_page * region.page_size, 64)
    facts = {
        "pages": pages,
        "page_size": region.page_size,
        "bytes_copied": copied,
        "wp_pages_after_protect": protected,
        "write_fault": fault_facts(fault, region) if isinstance(fault, PagefaultEvent) else None,
        "writer_blocked_while_protected": writer_blocked,
        "read_faulted": bool(read_events) or not read_finished,
        "read_content_ok": read_ok,
        "writer_woken_by_unprotect": writer_woken,
        "wp_pages_after_unprotect": protected_after,
        "written_data_ok": written_ok,
        "rest_of_page_ok": rest_ok,
        "other_pages_ok": others_ok,
    }
    facts["pagemap_reports_uffd_wp"] = pagemap_reports_uffd_wp()
    bits_ok = not facts["pagemap_reports_uffd_wp"] or (
        protected == list(range(pages)) and protected_after == others
    )
    ok = (
        isinstance(fault, PagefaultEvent)
        and fault.flags == WP_WRITE
        and fault.address == region.page_addr(target)
        and writer_blocked
        and facts["read_faulted"] is False
        and read_ok
        and writer_woken
        and bits_ok
        and written_ok
        and rest_ok
        and others_ok
    )
    flags = "+".join(facts["write_fault"]["flags"]) if facts["write_fault"] else "none"
    return Observation(
        facts,
        ok,
        f"write fault={flags} woken={writer_woken} data={'ok' if written_ok else 'BAD'}",
        "" if ok else json.dumps(facts),
    )


# --- wp-shmem-survives-zap --------------------------------------------------------------------


def _write_faults_wp(uffd: Userfaultfd, region: Region, page: int) -> dict[str, Any]:
    """Write one page (an atomic add of 0: data unchanged), expect a WP fault, unprotect
    the page to let the write finish, then protect it again."""
    writer = Background(region.touch, page, write=True)
    fault = next_event(uffd, timeout=EVENT_TIMEOUT)
    blocked = not writer.finished(BLOCK_PROBE)
    uffd.writeprotect(*region.span(page), mode=UNPROTECT)
    finished = writer.finished(EVENT_TIMEOUT)
    uffd.writeprotect(*region.span(page))
    fault = fault if isinstance(fault, PagefaultEvent) else None
    return {
        "fault": fault_facts(fault, region),
        "write_blocked": blocked,
        "write_finished_after_unprotect": finished,
        "wp_fault_ok": bool(
            fault and fault.flags == WP_WRITE and fault.address == region.page_addr(page)
        )
        and blocked
        and finished,
    }


@scenario(
    id="wp-shmem-survives-zap",
    title="uffd-wp survives a zap of shared memory (PTE markers)",
    checks="write-protected shmem/hugetlbfs pages keep their protection through "
    "MADV_DONTNEED and MADV_PAGEOUT: the zapped PTE becomes a uffd-wp PTE marker and the "
    "next write still raises a WP fault (PTE markers, 5.19)",
    memory=SHARED_KINDS,
)
def wp_shmem_survives_zap(ctx: Context) -> Observation:
    pages = 4
    region = ctx.region(pages)
    region.fill_indexed(SEED)
    uffd = ctx.uffd(ctx.mode_features("wp"))
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    facts: dict[str, Any] = {"pagemap_protected": pagemap_view(region), "swap_configured": _swap()}

    rounds = {}
    for name, advice, first in (
        ("MADV_DONTNEED", sc.MADV_DONTNEED, 0),
        ("MADV_PAGEOUT", sc.MADV_PAGEOUT, 2),
    ):
        before = pagemap_view(region)[first : first + 2]
        try:
            region.madvise(advice, *_offset_span(region, first, 2))
            result = "ok"
        except UffdError as exc:
            result = exc.errno_name
        after = pagemap_view(region)[first : first + 2]
        outcome = {
            "madvise": result,
            "pagemap_before": before,
            "pagemap_after": after,
            "unmapped": [
                ("PRESENT" in b) and ("PRESENT" not in a)
                for b, a in zip(before, after, strict=True)
            ],
            "wp_kept": all("UFFD_WP" in entry for entry in after),
        }
        outcome.update(_write_faults_wp(uffd, region, first))
        rounds[name] = outcome
    facts["rounds"] = rounds
    facts["data_intact"] = region.find_indexed_mismatch(SEED) is None
    if ctx.memory.is_hugetlb:
        facts["note"] = "MADV_PAGEOUT does not apply to hugetlb VMAs (EINVAL)"
    elif not facts["swap_configured"]:
        facts["note"] = (
            "no swap here: MADV_PAGEOUT unmaps the shmem page (marker installed) but reclaim "
            "cannot write it out, so it stays in the page cache"
        )
    dontneed = rounds["MADV_DONTNEED"]
    pageout = rounds["MADV_PAGEOUT"]
    ok = (
        dontneed["madvise"] == "ok"
        and dontneed["wp_kept"]
        and dontneed["wp_fault_ok"]
        and pageout["wp_kept"]
        and pageout["wp_fault_ok"]
        and facts["data_intact"]
    )
    key = (
        f"after DONTNEED wp_fault={dontneed['wp_fault_ok']}; "
        f"PAGEOUT {pageout['madvise']} unmapped={any(pageout['unmapped'])} "
        f"wp_fault={pageout['wp_fault_ok']}"
    )
    return Observation(facts, ok, key, "" if ok else json.dumps(rounds))


def _offset_span(region: Region, first: int, count: int) -> tuple[int, int]:
    addr, length = region.span(first, count)
    return addr - region.addr, length


def _swap() -> bool:
    with open("/proc/swaps") as swaps:
        return len(swaps.read().splitlines()) > 1


# --- wp-unpopulated ---------------------------------------------------------------------------


def _protect_unpopulated(ctx: Context, features: Feature) -> dict[str, Any]:
    region = ctx.region(3)
    uffd = ctx.uffd(features)
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    facts: dict[str, Any] = {"pagemap_after_protect": pagemap_view(region)}
    reader = Background(region.read, 0, 8)
    read_event = _fault_or_finish(uffd, reader, FINISH_TIMEOUT)
    read_finished = reader.finished(0)
    writer = Background(region.write, b"first", region.page_size)
    fault = _fault_or_finish(uffd, writer, EVENT_TIMEOUT)
    blocked = not writer.finished(BLOCK_PROBE) if fault else False
    if fault is not None or read_event is not None or not read_finished:
        uffd.writeprotect(region, mode=UNPROTECT)
    finished = writer.finished(EVENT_TIMEOUT)
    fault = fault if isinstance(fault, PagefaultEvent) else None
    facts.update(
        {
            "read_faulted": read_event is not None or not read_finished,
            "read_zeros": read_finished and reader.value(0) == bytes(8),
            "pagemap_after_read": pagemap_view(region),
            "write_fault": fault_facts(fault, region),
            "write_blocked": blocked,
            "write_finished": finished,
            "data_ok": finished and region.read(region.page_size, 5) == b"first",
        }
    )
    uffd.close()
    return facts


@scenario(
    id="wp-unpopulated",
    title="UFFD_FEATURE_WP_UNPOPULATED",
    checks="with WP_UNPOPULATED (6.4) write-protecting never-touched anonymous memory "
    "installs uffd-wp markers so the first write raises a WP fault; without it the "
    "protection of an empty PTE is a no-op and the first write just populates",
    memory=("anon",),
    features=Feature.PAGEFAULT_FLAG_WP | Feature.WP_UNPOPULATED,
)
def wp_unpopulated(ctx: Context) -> Observation:
    wp = ctx.mode_features("wp")
    with_feature = _protect_unpopulated(ctx, wp | Feature.WP_UNPOPULATED)
    without_feature = _protect_unpopulated(ctx, wp)
    facts = {"with_wp_unpopulated": with_feature, "without_wp_unpopulated": without_feature}
    fault = with_feature["write_fault"]
    ok = (
        fault is not None
        and fault["flags"] == flag_names(WP_WRITE)
        and fault["page"] == 1
        and with_feature["write_blocked"]
        and with_feature["write_finished"]
        and not with_feature["read_faulted"]
        and with_feature["read_zeros"]
        and with_feature["data_ok"]
        and without_feature["write_fault"] is None
        and not without_feature["write_blocked"]
        and without_feature["data_ok"]
    )
    key = (
        f"first write: with={'+'.join(fault['flags']) if fault else 'no fault'}, "
        f"without={'fault' if without_feature['write_fault'] else 'no fault'}"
    )
    return Observation(facts, ok, key, "" if ok else json.dumps(facts))


# --- wp-async-pagemap-scan ----------------------------------------------------------------------


def _written_scan(region: Region) -> tuple[list[int], int]:
    """PAGEMAP_SCAN for written pages, write-protecting them again; (page indexes, walk_end)."""
    with Pagemap() as pagemap:
        result = pagemap.scan(
            region.addr,
            region.end,
            flags=ScanFlag.WP_MATCHING | ScanFlag.CHECK_WPASYNC,
            category_mask=PageCategory.WRITTEN,
            return_mask=PageCategory.WRITTEN,
        )
    pages = [region.page_index(a) for a in result.page_addresses(region.page_size)]
    return pages, result.walk_end - region.addr


@scenario(
    id="wp-async-pagemap-scan",
    title="UFFD_FEATURE_WP_ASYNC dirty tracking read with PAGEMAP_SCAN",
    checks="with WP_ASYNC (6.7) writes to write-protected pages never block: the kernel "
    "resolves them itself, and PAGEMAP_SCAN (6.7) with WP_MATCHING|CHECK_WPASYNC and "
    "category WRITTEN reports exactly the written pages and protects them again",
    memory=ALL_KINDS,
    features=Feature.PAGEFAULT_FLAG_WP | Feature.WP_ASYNC,
    min_kernel="6.7",
)
def wp_async_pagemap_scan(ctx: Context) -> Observation:
    pages = _pages(ctx, 8, 4)
    region = ctx.region(pages)
    region.fill_indexed(SEED)
    features = ctx.mode_features("wp") | Feature.WP_ASYNC
    if ctx.memory is MemoryKind.ANON:
        features |= Feature.WP_UNPOPULATED  # track never-touched anon pages too
    uffd = ctx.uffd(features)
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    initially_written, _ = _written_scan(region)

    written = [1, 3] if ctx.memory.is_hugetlb else [1, 4, 6]
    writer = Background(region.touch, written, write=True)
    writes_blocked = not writer.finished(FINISH_TIMEOUT)
    if writes_blocked:
        uffd.writeprotect(region, mode=UNPROTECT)
        writer.finished(EVENT_TIMEOUT)
    events = uffd.read_events(timeout=0)
    wp_after_writes = wp_pages(region)
    reported, walk_end = _written_scan(region)
    wp_after_scan = wp_pages(region)
    reported_again, _ = _written_scan(region)
    rewriter = Background(region.touch, [written[0]], write=True)
    rewrite_blocked = not rewriter.finished(FINISH_TIMEOUT)
    reported_rewrite, _ = _written_scan(region)
    facts = {
        "pages": pages,
        "page_size": region.page_size,
        "written_pages": written,
        "written_before_any_write": initially_written,
        "writes_blocked": writes_blocked,
        "messages_queued": len(events),
        "wp_pages_after_writes": wp_after_writes,
        "scan_reported": reported,
        "scan_walk_end_offset": walk_end,
        "wp_pages_after_scan": wp_after_scan,
        "second_scan_reported": reported_again,
        "rewrite_blocked": rewrite_blocked,
        "scan_after_rewrite": reported_rewrite,
        "data_intact": region.find_indexed_mismatch(SEED) is None,
    }
    everything = list(range(pages))
    ok = (
        initially_written == []
        and not writes_blocked
        and not events
        and reported == written
        and walk_end == region.length
        and wp_after_scan == everything
        and reported_again == []
        and not rewrite_blocked
        and reported_rewrite == [written[0]]
        and facts["data_intact"]
    )
    key = f"scan reported {reported} (wrote {written}), second scan {reported_again}"
    return Observation(facts, ok, key, "" if ok else json.dumps(facts))


# --- wp-cleared-on-close --------------------------------------------------------------------------

WP_CLOSE_FIX = KnownBug(
    fixed_in="6.9",
    fix="mm/userfaultfd: reset ptes when close() for wr-protected ones",
    signature="after close() of the last uffd reference the write-protected pages still "
    "carry the uffd-wp bit in pagemap (CVE-2024-36881)",
    # CVE record (cvelistV5 CVE-2024-36881): unaffected from 6.6.31 and 6.8.10.
    backports=("6.6.31", "6.8.10"),
)


@scenario(
    id="wp-cleared-on-close",
    title="uffd-wp bits are cleared when the uffd is closed",
    checks="closing the last reference to a uffd that write-protected pages must clear "
    "their uffd-wp PTE bits and markers, as UFFDIO_UNREGISTER does (fixed by 'mm/"
    "userfaultfd: reset ptes when close() for wr-protected ones', 6.9, CVE-2024-36881)",
    memory=ALL_KINDS,
    known_bug=WP_CLOSE_FIX,
)
def wp_cleared_on_close(ctx: Context) -> Observation:
    features = ctx.mode_features("wp")
    require_pagemap_uffd_wp()
    pages = _pages(ctx, 4, 3)
    region = ctx.region(pages)
    region.fill_indexed(SEED, 0, pages - 1)  # the last page stays unpopulated
    uffd = ctx.uffd(features)
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    before = pagemap_view(region)
    protected = wp_pages(region)
    uffd.close()
    after = pagemap_view(region)
    left = wp_pages(region)
    vma_flags = uffd_vm_flags(region.addr, region.end)
    writer = Background(region.touch, range(pages - 1), write=True)
    write_finished = writer.finished(FINISH_TIMEOUT)
    facts = {
        "pagemap_before_close": before,
        "wp_pages_before_close": protected,
        "pagemap_after_close": after,
        "wp_pages_after_close": left,
        "uffd_vm_flags_after_close": vma_flags,
        "write_after_close_finished": write_finished,
        "data_intact": write_finished and region.find_indexed_mismatch(SEED, 0, pages - 1) is None,
    }
    ok = protected == _protected_pages(ctx, pages) and left == [] and write_finished
    ok = ok and not vma_flags
    ok = ok and facts["data_intact"]
    return Observation(
        facts,
        ok,
        f"wp pages after close={left} (before {protected})",
        "" if ok else json.dumps(facts),
        buggy=bool(left),
    )


# --- wp-cleared-on-mremap ---------------------------------------------------------------------

WP_MREMAP_FIX = KnownBug(
    fixed_in="6.13",
    fix="mm: clear uffd-wp PTE/PMD state on mremap()",
    signature="after mremap() of a write-protected range registered without EVENT_REMAP "
    "the VMA loses VM_UFFD_WP but the moved PTEs keep the uffd-wp bit (CVE-2025-21696)",
    # CVE record (kernel CNA, CVE-2025-21696): unaffected from 6.12.11.
    backports=("6.12.11",),
)


def _protect_and_move(kind: str, features: int, write: bool) -> dict[str, Any]:
    """Protect a 3-page region, mremap it elsewhere, and report what the new range holds.
    With ``write`` also write every moved page (run this in a child: a stale marker is
    the kind of thing that could SIGBUS or hang)."""
    region = allocate(kind, 3)
    page = region.page_size
    region.fill_indexed(SEED, 0, 2)  # page 2 stays unpopulated
    uffd = Userfaultfd.open(Feature(features))
    parking_length = region.length + 2 * page
    parking = sc.mmap(
        0, parking_length, sc.PROT_NONE, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_NORESERVE
    )
    try:
        uffd.register(region, mode=RegisterMode.WP)
        uffd.writeprotect(region)
        old = region.addr
        facts: dict[str, Any] = {"wp_pages_before": wp_pages(region)}
        destination = (parking + page - 1) & ~(page - 1)
        region.mremap(region.length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, destination)
        facts["moved"] = region.addr != old
        facts["pagemap_after_move"] = pagemap_view(region)
        facts["wp_pages_after_move"] = wp_pages(region)
        facts["uffd_vm_flags_after_move"] = uffd_vm_flags(region.addr, region.end)
        facts["events"] = len(uffd.read_events(timeout=0))
        # mprotect(PROT_WRITE) over a PTE still marked uffd-wp is what made
        # page_table_check WARN in the CVE report.
        warned_before = kernel_warned()
        region.mprotect(sc.PROT_READ)
        region.mprotect(sc.PROT_RW)
        facts["kernel_warned"] = kernel_warned() and not warned_before
        facts["taint_warn_already_set"] = warned_before
        if write:
            writer = Background(region.touch, None, write=True)
            facts["write_finished"] = writer.finished(FINISH_TIMEOUT)
            facts["data_intact"] = (
                facts["write_finished"] and region.find_indexed_mismatch(SEED, 0, 2) is None
            )
        return facts
    finally:
        uffd.close()
        region.close()
        sc.munmap(parking, parking_length)


@scenario(
    id="wp-cleared-on-mremap",
    title="uffd-wp bits are cleared by mremap() without EVENT_REMAP",
    checks="mremap() of a write-protected range whose uffd lacks EVENT_REMAP drops the "
    "registration, so the moved PTEs must lose their uffd-wp bit and a write must neither "
    "fault nor SIGBUS (fixed by 'mm: clear uffd-wp PTE/PMD state on mremap()', 6.13, "
    "CVE-2025-21696)",
    memory=ALL_KINDS,
    known_bug=WP_MREMAP_FIX,
)
def wp_cleared_on_mremap(ctx: Context) -> Observation:
    features = ctx.mode_features("wp")
    require_pagemap_uffd_wp()
    facts = _protect_and_move(ctx.memory.value, int(features), write=False)
    outcome = run_in_child(_protect_and_move, ctx.memory.value, int(features), True, timeout=10)
    access: dict[str, Any] = {"child": outcome.status}
    if outcome.status == "ok":
        access.update(
            {k: outcome.value[k] for k in ("write_finished", "data_intact", "wp_pages_after_move")}
        )
    elif outcome.signal:
        access["signal"] = _signal_name(outcome.signal)
    elif outcome.exception is not None:
        access["error"] = str(outcome.exception)
    facts["write_in_child"] = access
    left = facts["wp_pages_after_move"]
    write_ok = access.get("write_finished") is True and access.get("data_intact") is True
    ok = (
        facts["moved"]
        and facts["wp_pages_before"] == _protected_pages(ctx, 3)
        and left == []
        and facts["uffd_vm_flags_after_move"] == []
        and facts["events"] == 0
        and not facts["kernel_warned"]
        and write_ok
    )
    key = f"wp pages after mremap={left}, write in child: " + (
        "ok" if write_ok else access.get("signal") or access["child"]
    )
    return Observation(facts, ok, key, "" if ok else json.dumps(facts), buggy=bool(left))


def _signal_name(number: int) -> str:
    return signal.Signals(number).name


# --- wp-fork -----------------------------------------------------------------------------------

WP_FORK_FIX = KnownBug(
    fixed_in="6.2",
    fix="mm/uffd: fix pte marker when fork() without fork event",
    signature="fork() without EVENT_FORK copies uffd-wp PTE markers into the child, whose "
    "VMA is not registered: the child's pagemap shows uffd-wp bits (and the kernel WARNs)",
    # Cc: stable 5.19+; in the linux-6.1.y stable queue of 2023-02-07 (released as 6.1.11).
    backports=("6.1.11",),
)


HUGETLB_FORK_FIX = KnownBug(
    fixed_in="6.4",
    fix="mm/hugetlb: fix uffd-wp during fork()",
    signature="fork() without EVENT_FORK keeps the uffd-wp bit on the child's present "
    "private hugetlb pages: the child's pagemap shows it and the child's write to such a "
    "page never completes",
    # Cc: stable; the 6.1-stable application FAILED (gregkh, 2023-05-07) and Debian 6.1.192
    # still shows the bug, so no backport is listed.
)


def _inspect_in_child(addr: int, pages: int, page_size: int) -> dict[str, Any]:
    """Runs in the forked child: its own pagemap view of the inherited range, then a write
    to every page (bounded: a write that faults to nobody must not hang the child)."""
    region = Region(addr, pages * page_size, MemoryKind.ANON, page_size=page_size)
    facts: dict[str, Any] = {
        "pagemap": pagemap_view(region),
        "wp_pages": wp_pages(region),
        "vm_flags": uffd_vm_flags(addr, region.end),
    }
    writer = Background(region.touch, None, write=True)
    facts["write_finished"] = writer.finished(EVENT_TIMEOUT)
    # Page 0 is the one populated page no variant zaps.
    facts["data_intact"] = (
        facts["write_finished"] and region.find_indexed_mismatch(SEED, 0, 1) is None
    )
    return facts


class ForkEventReader:
    """A helper process that shares the uffd and reads its fork event, so that a fork()
    in this process can return, then serves the child's WP faults by unprotecting.

    It has to be a process: fork() blocks in the kernel until the event is read, and
    os.fork() keeps the GIL while it waits, so no Python thread here could read it.
    Create it before registering any range: its own fork must not raise an event.
    """

    def __init__(self, uffd: Userfaultfd, page_size: int, timeout: float = 5.0) -> None:
        stop_read, self._stop = os.pipe()
        self._report, report_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # helper
            code = 0
            try:
                os.close(self._stop)
                os.close(self._report)
                facts = _serve_fork_events(uffd, page_size, stop_read, timeout)
                os.write(report_write, json.dumps(facts).encode())
            except BaseException:  # noqa: BLE001 - whatever happens, the helper exits
                code = 70
            finally:
                os._exit(code)
        os.close(stop_read)
        os.close(report_write)

    def finish(self, timeout: float = 5.0) -> dict[str, Any]:
        """Stop the helper and return what it saw (killed if it does not answer in time)."""
        os.close(self._stop)
        data = b""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._report], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._report, 1 << 16)
            if not chunk:
                break
            data += chunk
        os.close(self._report)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        return json.loads(data) if data else {"helper": "no report"}


def _serve_fork_events(
    uffd: Userfaultfd, page_size: int, stop_fd: int, timeout: float
) -> dict[str, Any]:
    facts: dict[str, Any] = {"fork_events": 0, "child_faults": []}
    child: Userfaultfd | None = None
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        watched = [stop_fd, uffd.fileno()] + ([child.fileno()] if child else [])
        ready, _, _ = select.select(watched, [], [], remaining)
        if stop_fd in ready:
            break
        if uffd.fileno() in ready:
            for event in uffd.read_events(timeout=0):
                if isinstance(event, ForkEvent):
                    facts["fork_events"] += 1
                    child = event.uffd
        if child is not None and child.fileno() in ready:
            for event in child.read_events(timeout=0):
                if isinstance(event, PagefaultEvent):
                    facts["child_faults"].append(flag_names(event.flags))
                    page = event.address & ~(page_size - 1)
                    child.writeprotect(page, page_size, mode=UNPROTECT)
    return facts


def _fork_variant(ctx: Context, event_fork: bool, private_alias: bool = False) -> dict[str, Any]:
    """Protect a range (page 1 then zapped, the last page never populated), fork, and
    report what the child inherited. With ``private_alias`` the range is a MAP_PRIVATE
    mapping of the memfd: a file VMA with an anon_vma, so fork() copies its page tables
    and meets its PTE markers (the case fixed in 6.2; shared file VMAs are not copied)."""
    pages = _pages(ctx, 4, 3)
    base = ctx.region(pages)
    region = base.alias(shared=False) if private_alias else base
    region.fill_indexed(SEED, 0, pages - 1)
    features = ctx.mode_features("wp")
    if ctx.memory is MemoryKind.ANON and ctx.offered & Feature.WP_UNPOPULATED:
        features |= Feature.WP_UNPOPULATED  # markers on anon too (6.4)
    if event_fork:
        features |= Feature.EVENT_FORK
    uffd = ctx.uffd(features)
    reader = ForkEventReader(uffd, region.page_size) if event_fork else None
    try:
        uffd.register(region, mode=RegisterMode.WP)
        uffd.writeprotect(region)
        # A zapped protected page: a PTE marker on file memory (5.19), nothing on anon.
        region.madvise(sc.MADV_DONTNEED, *_offset_span(region, 1, 1))
        parent_pagemap = pagemap_view(region)
        parent_wp = wp_pages(region)
        outcome = run_in_child(_inspect_in_child, region.addr, pages, region.page_size, timeout=10)
    finally:
        helper = reader.finish() if reader else None
    facts: dict[str, Any] = {
        "features": flag_names(features),
        "parent_pagemap": parent_pagemap,
        "parent_wp_pages": parent_wp,
        "parent_wp_pages_after_fork": wp_pages(region),
        "child": outcome.status,
    }
    if outcome.status == "ok":
        facts.update({f"child_{name}": value for name, value in outcome.value.items()})
    elif outcome.signal:
        facts["child_signal"] = _signal_name(outcome.signal)
    elif outcome.exception is not None:
        facts["child_error"] = str(outcome.exception)
    if helper is not None:
        facts["fork_events"] = helper.get("fork_events")
        facts["child_faults"] = helper.get("child_faults")
    uffd.close()  # no later fork may wait for an event of this uffd
    base.close()
    return facts


def _judge_fork(variants: dict[str, dict[str, Any]], bits_visible: bool) -> tuple[list[str], bool]:
    """Problems found in the fork variants, and whether a child inherited uffd-wp state
    without EVENT_FORK (the known bugs' signature: bits in its pagemap, or a write that
    never completes because the inherited bit is never resolved)."""
    problems: list[str] = []
    leaked = False
    for name, facts in variants.items():
        if "skipped" in facts:
            continue
        if facts["child"] != "ok":
            problems.append(f"{name}: child {facts['child']} {facts.get('child_signal', '')}")
            continue
        write_ok = facts["child_write_finished"] and facts["child_data_intact"]
        if not write_ok:
            problems.append(
                f"{name}: child write finished={facts['child_write_finished']}, "
                f"data intact={facts['child_data_intact']}"
            )
        if name.endswith("without_event_fork"):
            if facts["child_wp_pages"] or facts["child_vm_flags"]:
                problems.append(
                    f"{name}: child inherited uffd-wp on {facts['child_wp_pages']}, "
                    f"VmFlags {facts['child_vm_flags']}"
                )
            leaked = leaked or bool(facts["child_wp_pages"]) or not write_ok
            continue
        if facts["child_wp_pages"] != facts["parent_wp_pages"]:
            problems.append(
                f"{name}: child wp pages {facts['child_wp_pages']}, parent "
                f"{facts['parent_wp_pages']}"
            )
        if facts["child_vm_flags"] != ["uw"]:
            problems.append(f"{name}: child VmFlags {facts['child_vm_flags']}")
        if facts.get("fork_events") != 1:
            problems.append(f"{name}: {facts.get('fork_events')} fork events")
        faults = facts.get("child_faults") or []
        expected = len(facts["parent_wp_pages"]) if bits_visible else len(faults) or 1
        if len(faults) != expected or any(f != flag_names(WP_WRITE) for f in faults):
            problems.append(f"{name}: child faults {faults}")
    return problems, leaked


def _wp_fork(ctx: Context) -> Observation:
    ctx.mode_features("wp")
    variants = {"without_event_fork": _fork_variant(ctx, False)}
    if ctx.memory is MemoryKind.MEMFD:
        variants["private_alias_without_event_fork"] = _fork_variant(ctx, False, True)
    if ctx.offered & Feature.EVENT_FORK:
        variants["with_event_fork"] = _fork_variant(ctx, True)
    else:
        variants["with_event_fork"] = {"skipped": "kernel lacks UFFD_FEATURE_EVENT_FORK"}
    bits_visible = pagemap_reports_uffd_wp()
    problems, leaked = _judge_fork(variants, bits_visible)
    variants["pagemap_reports_uffd_wp"] = bits_visible
    parts = [
        f"{name.replace('_event_fork', '')}={facts.get('child_wp_pages', 'skipped')}"
        for name, facts in variants.items()
        if isinstance(facts, dict)
    ]
    key = "child wp pages: " + " ".join(parts)
    return Observation(variants, not problems, key, "; ".join(problems), buggy=leaked)


FORK_CHECKS = (
    "without EVENT_FORK the child's VMA is not registered, so it must inherit no uffd-wp "
    "bits or PTE markers and its writes complete; with EVENT_FORK the child inherits them "
    "and each write to a protected page raises a WP fault on the child's new uffd"
)

wp_fork = scenario(
    id="wp-fork",
    title="uffd-wp state across fork(), with and without EVENT_FORK",
    checks=FORK_CHECKS + " (markers: 'mm/uffd: fix pte marker when fork() without fork "
    "event', 6.2)",
    memory=("anon", "shmem", "memfd", "hugetlb"),
    hugepages=8,
    known_bug=WP_FORK_FIX,
)(_wp_fork)

# Private hugetlb is copied at fork by copy_hugetlb_page_range(), which kept the uffd-wp
# bit of present pages for a child without EVENT_FORK until 6.4; the child's writes to
# such a page then never complete (measured on Debian 6.1.192). Its own entry, because
# the fix differs from the one above.
wp_fork_hugetlb_private = scenario(
    id="wp-fork-hugetlb-private",
    title="uffd-wp state across fork() of private hugetlb, with and without EVENT_FORK",
    checks=FORK_CHECKS + " (private hugetlb: 'mm/hugetlb: fix uffd-wp during fork()', 6.4)",
    memory=("hugetlb-private",),
    hugepages=8,
    known_bug=HUGETLB_FORK_FIX,
)(_wp_fork)
