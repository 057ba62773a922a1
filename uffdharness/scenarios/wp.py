"""Write-protect mode: WP faults, PTE markers that survive a zap, WP_UNPOPULATED and
WP_ASYNC tracking read back with PAGEMAP_SCAN.

The uffd-wp state of each page is read back from /proc/self/pagemap bit 57 ("mm/pagemap:
export uffd-wp protection information", 5.14), so every scenario reports what the page
tables hold, not only what faults were seen. The names defined first here are the write-
protect vocabulary ``wp_cleared`` and ``wp_fork`` share.
"""

from __future__ import annotations

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
from ..events import PagefaultEvent
from ..memory import PAGE_SIZE, MemoryKind, Region
from ..pagemap import Pagemap, region_view, wp_pages
from ..uffd import Userfaultfd
from .checks import Checks, errno_of
from .context import Background, Context, next_event
from .huge import first_touch_thps, pmd_mapped_bytes
from .model import ALL_KINDS, SHARED_KINDS, THP_KINDS, Observation, Skip
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
PM_UFFD_WP_SINCE = "5.14"  # "mm/pagemap: export uffd-wp protection information"


# --- the shared vocabulary ---------------------------------------------------------------------


def require_pagemap_uffd_wp(ctx: Context) -> None:
    """Skip unless pagemap reports uffd-wp: before 5.14 bit 57 reads 0 without any error."""
    if not ctx.system.pagemap_uffd_wp:
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


def is_wp_write_at(fault: PagefaultEvent | None, region: Region, page: int) -> bool:
    """A write to a write-protected page: flags exactly WP|WRITE, at the page's address
    (uffd_msg.arg.pagefault.address is page-aligned without UFFD_FEATURE_EXACT_ADDRESS)."""
    return fault is not None and fault.flags == WP_WRITE and fault.address == region.page_addr(page)


def pages_for(ctx: Context, small: int, huge: int) -> int:
    """How many pages a scenario maps: fewer of the large pages of the hugetlb and PMD-THP
    kinds."""
    return huge if ctx.page_size > PAGE_SIZE else small


def protected_pages(ctx: Context, pages: int) -> list[int]:
    """Pages carrying uffd-wp after protecting a range whose last page is unpopulated.
    File-backed VMAs (shmem, hugetlbfs) always get a uffd-wp PTE marker on the empty one
    (5.19); anonymous ones only with WP_UNPOPULATED (6.4, not used here):
    userfaultfd_wp_use_markers()."""
    return list(range(pages - 1 if ctx.spec.family == "anon" else pages))


def offset_span(region: Region, first: int, count: int) -> tuple[int, int]:
    """(offset from the region start, length) of ``count`` pages from ``first``."""
    addr, length = region.span(first, count)
    return addr - region.addr, length


# --- wp-basic ---------------------------------------------------------------------------------


def _indexed_source(ctx: Context, region: Region) -> Region:
    """Anonymous memory holding fill_indexed(SEED) laid out at ``region``'s page size."""
    anon = ctx.region(region.length // MemoryKind.ANON.page_size, kind=MemoryKind.ANON)
    source = anon.view(region.page_size)
    source.fill_indexed(SEED)
    return source


def _populate(
    ctx: Context, uffd: Userfaultfd, region: Region, source: Region, modes: RegisterMode
) -> dict[str, Any]:
    """Register ``region`` and fill it with ``source``'s content. UFFDIO_COPY installs small
    pages only (mfill_atomic() works PTE by PTE, shmem's with order-0 folios), so a PMD-THP
    kind is filled by its first touch before registering: a THP then maps each page."""
    if ctx.spec.thp != "pmd":
        uffd.register(region, mode=modes)
        copied = uffd.copy(region.addr, source.addr, region.length)
        return {"populated_by": "UFFDIO_COPY", "bytes_copied": copied}
    facts = first_touch_thps(region, ctx.spec.family, lambda: region.fill_indexed(SEED))
    uffd.register(region, mode=modes)
    return {"populated_by": "first touch", **facts}


@scenario(
    id="wp-basic",
    title="Write-protect faults on populated memory",
    checks="on a MISSING|WP range populated with UFFDIO_COPY and write-protected, a write "
    "raises one fault flagged WP|WRITE at the page address and blocks until "
    "UFFDIO_WRITEPROTECT clears the protection; a read does not fault (5.7 anon, 5.19 "
    "shmem and hugetlbfs); on a PMD-mapped THP too (the anonymous PMD keeps its uffd-wp "
    "bit, a shmem PMD is split into PTEs with markers)",
    memory=ALL_KINDS + THP_KINDS,
    modes=RegisterMode.MISSING | RegisterMode.WP,
)
def wp_basic(ctx: Context) -> Observation:
    modes = RegisterMode.MISSING | RegisterMode.WP
    pages = pages_for(ctx, 4, 3)
    region = ctx.region(pages)
    uffd = ctx.uffd(ctx.mode_features(modes))
    source = _indexed_source(ctx, region)
    populated = _populate(ctx, uffd, region, source, modes)
    uffd.writeprotect(region)
    protected = wp_pages(region)
    pmd_mapped_protected = pmd_mapped_bytes(region.addr, region.length)

    target, read_page = 1, 2
    writer = Background(region.write, PAYLOAD, target * region.page_size)
    fault = next_event(uffd, timeout=EVENT_TIMEOUT)
    fault = fault if isinstance(fault, PagefaultEvent) else None
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
    rest_length = region.page_size - len(PAYLOAD)
    rest_ok = region.read(rest_offset, rest_length) == source.read(rest_offset, rest_length)
    others = [i for i in range(pages) if i != target]
    others_ok = all(region.find_indexed_mismatch(SEED, i, 1) is None for i in others)
    read_ok = read_finished and reader.value(0) == source.read(read_page * region.page_size, 64)
    bits_visible = ctx.system.pagemap_uffd_wp

    check = Checks({"pages": pages, "page_size": region.page_size, **populated})
    if ctx.spec.thp == "pmd":
        check.expect("pmd_mapped_bytes", populated["pmd_mapped_bytes"], region.length)
        # Anonymous THPs stay PMD-mapped: change_huge_pmd() sets uffd-wp on the PMD and a
        # write faults in do_huge_pmd_wp_page(). A file PMD is split (zapped) instead, as
        # PTE markers need a page table (pgtable_split_needed(), 5.19): shmem's pages are
        # mapped by PTEs again on the next access, the THP staying in the page cache.
        check.expect(
            "pmd_mapped_bytes_after_protect",
            pmd_mapped_protected,
            region.length if ctx.spec.family == "anon" else 0,
        )
    if bits_visible:
        check.expect("wp_pages_after_protect", protected, list(range(pages)))
    else:
        check.fact("wp_pages_after_protect", protected)
    check.expect_that(
        "write_fault",
        fault_facts(fault, region),
        is_wp_write_at(fault, region, target),
        f"a WRITE+WP fault at page {target}",
    )
    check.expect("writer_blocked_while_protected", writer_blocked, True)
    check.expect("read_faulted", bool(read_events) or not read_finished, False)
    check.expect("read_content_ok", read_ok, True)
    check.expect("writer_woken_by_unprotect", writer_woken, True)
    if bits_visible:
        check.expect("wp_pages_after_unprotect", protected_after, others)
    else:
        check.fact("wp_pages_after_unprotect", protected_after)
    check.expect("written_data_ok", written_ok, True)
    check.expect("rest_of_page_ok", rest_ok, True)
    check.expect("other_pages_ok", others_ok, True)
    check.fact("pagemap_reports_uffd_wp", bits_visible)
    flags = "+".join(check.facts["write_fault"]["flags"]) if fault else "none"
    return check.observation(
        f"write fault={flags} woken={writer_woken} data={'ok' if written_ok else 'BAD'}"
    )


# --- wp-shmem-survives-zap --------------------------------------------------------------------


def _write_faults_wp(check: Checks, uffd: Userfaultfd, region: Region, page: int) -> None:
    """Write one page (an atomic add of 0: data unchanged), expect a WP fault, unprotect
    the page to let the write finish, then protect it again."""
    writer = Background(region.touch, page, write=True)
    fault = next_event(uffd, timeout=EVENT_TIMEOUT)
    fault = fault if isinstance(fault, PagefaultEvent) else None
    blocked = not writer.finished(BLOCK_PROBE)
    uffd.writeprotect(*region.span(page), mode=UNPROTECT)
    finished = writer.finished(EVENT_TIMEOUT)
    uffd.writeprotect(*region.span(page))
    fault_ok = is_wp_write_at(fault, region, page)
    check.expect_that(
        "fault", fault_facts(fault, region), fault_ok, f"a WRITE+WP fault at page {page}"
    )
    check.expect("write_blocked", blocked, True)
    check.expect("write_finished_after_unprotect", finished, True)
    check.fact("wp_fault_ok", fault_ok and blocked and finished)


def _swap() -> bool:
    with open("/proc/swaps") as swaps:
        return len(swaps.read().splitlines()) > 1


@scenario(
    id="wp-shmem-survives-zap",
    title="uffd-wp survives a zap of shared memory (PTE markers)",
    checks="write-protected shmem/hugetlbfs pages keep their protection through "
    "MADV_DONTNEED and MADV_PAGEOUT: the zapped PTE becomes a uffd-wp PTE marker and the "
    "next write still raises a WP fault (PTE markers, 5.19)",
    memory=SHARED_KINDS,
    modes=RegisterMode.WP,
    uses=("zap",),
)
def wp_shmem_survives_zap(ctx: Context) -> Observation:
    pages = 4
    region = ctx.region(pages)
    region.fill_indexed(SEED)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.WP))
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    swap = _swap()
    check = Checks({"pagemap_protected": region_view(region), "swap_configured": swap})

    rounds = Checks()
    for name, advice, first in (
        ("MADV_DONTNEED", sc.MADV_DONTNEED, 0),
        ("MADV_PAGEOUT", sc.MADV_PAGEOUT, 2),
    ):
        outcome = Checks()
        before = region_view(region)[first : first + 2]
        result = errno_of(region.madvise, advice, *offset_span(region, first, 2))
        after = region_view(region)[first : first + 2]
        if advice == sc.MADV_DONTNEED:
            outcome.expect("madvise", result, "ok")
        else:  # hugetlb VMAs refuse MADV_PAGEOUT (EINVAL): the protection must stay anyway
            outcome.fact("madvise", result)
        outcome.fact("pagemap_before", before)
        outcome.fact("pagemap_after", after)
        outcome.fact(
            "unmapped",
            [("PRESENT" in b) and ("PRESENT" not in a) for b, a in zip(before, after, strict=True)],
        )
        outcome.expect("wp_kept", all("UFFD_WP" in entry for entry in after), True)
        _write_faults_wp(outcome, uffd, region, first)
        rounds.nest(name, outcome)
    check.nest("rounds", rounds)
    check.expect("data_intact", region.find_indexed_mismatch(SEED) is None, True)
    if ctx.memory.is_hugetlb:
        check.fact("note", "MADV_PAGEOUT does not apply to hugetlb VMAs (EINVAL)")
    elif not swap:
        check.fact(
            "note",
            "no swap here: MADV_PAGEOUT unmaps the shmem page (marker installed) but reclaim "
            "cannot write it out, so it stays in the page cache",
        )
    dontneed = rounds.facts["MADV_DONTNEED"]
    pageout = rounds.facts["MADV_PAGEOUT"]
    return check.observation(
        f"after DONTNEED wp_fault={dontneed['wp_fault_ok']}; "
        f"PAGEOUT {pageout['madvise']} unmapped={any(pageout['unmapped'])} "
        f"wp_fault={pageout['wp_fault_ok']}"
    )


# --- wp-unpopulated ---------------------------------------------------------------------------


def _fault_or_finish(uffd: Userfaultfd, worker: Background, timeout: float):
    """The first message on ``uffd``, or None as soon as ``worker`` finished without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if uffd.wait(0.005):
            return next_event(uffd, timeout=0)
        if worker.finished(0):
            return next_event(uffd, timeout=0) if uffd.wait(0) else None
    return None


def _protect_unpopulated(ctx: Context, features: Feature) -> dict[str, Any]:
    region = ctx.region(3)
    uffd = ctx.uffd(features)
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    facts: dict[str, Any] = {"pagemap_after_protect": region_view(region)}
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
            "pagemap_after_read": region_view(region),
            "write_fault": fault_facts(fault, region),
            "write_blocked": blocked,
            "write_finished": finished,
            "data_ok": finished and region.read(region.page_size, 5) == b"first",
        }
    )
    uffd.close()
    return facts


def _marker_cleared(ctx: Context, features: Feature, clear: str) -> Checks:
    """Protect two never-touched pages (uffd-wp markers), clear the markers with
    ``clear`` ("MADV_DONTNEED" or "unprotect"), then write: the write must not fault."""
    region = ctx.region(2)
    uffd = ctx.uffd(features)
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    part = Checks({"pagemap_after_protect": region_view(region)})
    marked = wp_pages(region)
    if clear == "MADV_DONTNEED":
        region.madvise(sc.MADV_DONTNEED)
    else:
        uffd.writeprotect(region, mode=UNPROTECT)
    part.fact("pagemap_after_clear", region_view(region))
    cleared = wp_pages(region)
    writer = Background(region.write, b"after", 0)
    fault = _fault_or_finish(uffd, writer, FINISH_TIMEOUT)
    if fault is not None or not writer.finished(0):
        uffd.writeprotect(region, mode=UNPROTECT)  # free a write that faulted
    finished = writer.finished(EVENT_TIMEOUT)
    fault = fault if isinstance(fault, PagefaultEvent) else None
    if ctx.system.pagemap_uffd_wp:
        part.expect("wp_pages_after_protect", marked, [0, 1])
        part.expect("wp_pages_after_clear", cleared, [])
    else:
        part.fact("wp_pages_after_protect", marked)
        part.fact("wp_pages_after_clear", cleared)
    part.expect("write_fault", fault_facts(fault, region), None)
    part.expect("write_finished", finished, True)
    part.expect("data_ok", finished and region.read(0, 5) == b"after", True)
    uffd.close()
    return part


@scenario(
    id="wp-unpopulated",
    title="UFFD_FEATURE_WP_UNPOPULATED",
    checks="with WP_UNPOPULATED (6.4) write-protecting never-touched anonymous memory "
    "installs uffd-wp markers so the first write raises a WP fault; without it the "
    "protection of an empty PTE is a no-op and the first write just populates; "
    "MADV_DONTNEED drops the markers of anonymous memory, and so does UFFDIO_WRITEPROTECT "
    "unprotect: pagemap's uffd-wp bit goes and the next write does not fault",
    memory=("anon",),
    modes=RegisterMode.WP,
    features=Feature.WP_UNPOPULATED,
)
def wp_unpopulated(ctx: Context) -> Observation:
    wp = ctx.mode_features(RegisterMode.WP)
    with_feature = Checks(_protect_unpopulated(ctx, wp | Feature.WP_UNPOPULATED))
    without_feature = Checks(_protect_unpopulated(ctx, wp))

    fault = with_feature.facts["write_fault"]
    with_feature.expect_that(
        "write_fault",
        fault,
        fault is not None and fault["flags"] == flag_names(WP_WRITE) and fault["page"] == 1,
        "a WRITE+WP fault at page 1",
    )
    for name, wanted in (
        ("write_blocked", True),
        ("write_finished", True),
        ("read_faulted", False),
        ("read_zeros", True),
        ("data_ok", True),
    ):
        with_feature.expect(name, with_feature.facts[name], wanted)
    for name, wanted in (("write_fault", None), ("write_blocked", False), ("data_ok", True)):
        without_feature.expect(name, without_feature.facts[name], wanted)

    check = Checks()
    check.nest("with_wp_unpopulated", with_feature)
    check.nest("without_wp_unpopulated", without_feature)
    # zap_nonpresent_ptes(): "For anon: always drop the marker" (file-backed memory keeps
    # it unless the zap asks to drop markers); an unprotect clears a marker like a bit.
    markers = wp | Feature.WP_UNPOPULATED
    check.nest("marker_after_dontneed", _marker_cleared(ctx, markers, "MADV_DONTNEED"))
    check.nest("marker_after_unprotect", _marker_cleared(ctx, markers, "unprotect"))
    without_faulted = without_feature.facts["write_fault"]
    return check.observation(
        f"first write: with={'+'.join(fault['flags']) if fault else 'no fault'}, "
        f"without={'fault' if without_faulted else 'no fault'}"
    )


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
    modes=RegisterMode.WP,
    features=Feature.WP_ASYNC,
    min_kernel="6.7",
)
def wp_async_pagemap_scan(ctx: Context) -> Observation:
    pages = pages_for(ctx, 8, 4)
    region = ctx.region(pages)
    region.fill_indexed(SEED)
    features = ctx.mode_features(RegisterMode.WP) | Feature.WP_ASYNC
    if ctx.spec.family == "anon":
        # Track never-touched anonymous pages too; file-backed VMAs always get markers
        # (userfaultfd_wp_use_markers()).
        features |= Feature.WP_UNPOPULATED
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

    check = Checks({"pages": pages, "page_size": region.page_size, "written_pages": written})
    check.expect("written_before_any_write", initially_written, [])
    check.expect("writes_blocked", writes_blocked, False)
    check.expect("messages_queued", len(events), 0)
    check.fact("wp_pages_after_writes", wp_after_writes)
    check.expect("scan_reported", reported, written)
    check.expect("scan_walk_end_offset", walk_end, region.length)
    check.expect("wp_pages_after_scan", wp_after_scan, list(range(pages)))
    check.expect("second_scan_reported", reported_again, [])
    check.expect("rewrite_blocked", rewrite_blocked, False)
    check.expect("scan_after_rewrite", reported_rewrite, [written[0]])
    check.expect("data_intact", region.find_indexed_mismatch(SEED) is None, True)
    return check.observation(
        f"scan reported {reported} (wrote {written}), second scan {reported_again}"
    )
