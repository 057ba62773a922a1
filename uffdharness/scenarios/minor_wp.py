"""Minor faults on a range also registered for write protection: UFFDIO_CONTINUE_MODE_WP."""

from __future__ import annotations

from .. import syscalls as sc
from ..abi import ContinueMode, FaultFlag, RegisterMode
from ..events import PagefaultEvent
from ..memory import Region
from ..pagemap import wp_pages
from .checks import Checks
from .context import Background, Context, next_event
from .model import MINOR_KINDS, Observation
from .registry import scenario
from .wp import (
    BLOCK_PROBE,
    EVENT_TIMEOUT,
    FINISH_TIMEOUT,
    PAYLOAD,
    UNPROTECT,
    fault_facts,
    is_wp_write_at,
    require_pagemap_uffd_wp,
)

PATTERN = b"page-cache-16B.\n"
CONTINUE_MODE_WP_SINCE = "6.4"  # "mm: userfaultfd: add UFFDIO_CONTINUE_MODE_WP to install WP PTEs"


def _fill_page_cache(region: Region) -> Region | None:
    """Put PATTERN in the page cache behind ``region`` without leaving PTEs in it; returns
    a second mapping that shows the page cache (None for anonymous shmem, which has no fd:
    there the region itself is filled and its PTEs zapped, keeping the page cache)."""
    if region.fd < 0:
        region.fill(PATTERN)
        region.madvise(sc.MADV_DONTNEED)
        return None
    view = region.alias()
    if region.kind.is_hugetlb:  # hugetlbfs has no write(2): fill through the alias
        view.fill(PATTERN)
    else:
        region.pwrite(PATTERN * (region.length // len(PATTERN)))
    return view


@scenario(
    id="minor-wp",
    title="UFFDIO_CONTINUE_MODE_WP on a MINOR|WP range",
    checks="on a range registered MINOR|WP a read of a page-cache page with no PTE raises "
    "a MINOR fault; UFFDIO_CONTINUE with UFFDIO_CONTINUE_MODE_WP ('mm: userfaultfd: add "
    "UFFDIO_CONTINUE_MODE_WP to install WP PTEs', 6.4) maps it write-protected (pagemap "
    "uffd-wp), so the next write raises a WP|WRITE fault and blocks until "
    "UFFDIO_WRITEPROTECT clears it; the page-cache content and the write are intact",
    memory=MINOR_KINDS,
    modes=RegisterMode.MINOR | RegisterMode.WP,
    min_kernel=CONTINUE_MODE_WP_SINCE,
)
def minor_wp(ctx: Context) -> Observation:
    require_pagemap_uffd_wp(ctx)
    modes = RegisterMode.MINOR | RegisterMode.WP
    region = ctx.region(2)
    uffd = ctx.uffd(ctx.mode_features(modes))
    cache_view = _fill_page_cache(region)
    uffd.register(region, mode=modes)
    page, size = 1, region.page_size
    offset = page * size

    reader = Background(region.read, offset, len(PATTERN))
    fault = next_event(uffd, timeout=EVENT_TIMEOUT)
    fault = fault if isinstance(fault, PagefaultEvent) else None
    mapped = uffd.continue_(*region.span(page), mode=ContinueMode.WP) if fault else 0
    read_done = reader.finished(FINISH_TIMEOUT)
    read_back = reader.value(0).decode(errors="replace") if read_done else None
    protected = wp_pages(region)

    writer = Background(region.write, PAYLOAD, offset)
    wp_fault = next_event(uffd, timeout=EVENT_TIMEOUT)
    wp_fault = wp_fault if isinstance(wp_fault, PagefaultEvent) else None
    writer_blocked = not writer.finished(BLOCK_PROBE)
    uffd.writeprotect(*region.span(page), mode=UNPROTECT)
    writer_woken = writer.finished(EVENT_TIMEOUT)
    protected_after = wp_pages(region)

    written = region.read(offset, len(PAYLOAD)) == PAYLOAD
    rest_intact = region.verify(PATTERN, offset + len(PAYLOAD), size - len(PAYLOAD))
    check = Checks({"page_size": size})
    check.expect_that(
        "minor_fault",
        fault_facts(fault, region),
        fault is not None
        and fault.flags == FaultFlag.MINOR
        and fault.address == region.addr + offset,
        f"a MINOR fault (no WRITE) at page {page}",
    )
    check.expect("bytes_continued", mapped, size)
    check.expect("read_after_continue", read_back, PATTERN.decode())
    check.expect("wp_pages_after_continue", protected, [page])
    check.expect_that(
        "write_fault",
        fault_facts(wp_fault, region),
        is_wp_write_at(wp_fault, region, page),
        f"a WRITE+WP fault at page {page}",
    )
    check.expect("writer_blocked_while_protected", writer_blocked, True)
    check.expect("writer_woken_by_unprotect", writer_woken, True)
    check.expect("wp_pages_after_unprotect", protected_after, [])
    check.expect("written_data_ok", written, True)
    check.expect("rest_of_page_is_page_cache", rest_intact, True)
    if cache_view is not None:
        # A shared mapping writes the page-cache page itself; a private one (memfd-private,
        # hugetlb-private) breaks COW on the write and leaves the page cache as it was.
        seen = cache_view.read(offset, len(PAYLOAD))
        old = PATTERN * (len(PAYLOAD) // len(PATTERN))
        holds = "write" if seen == PAYLOAD else "old" if seen == old else "other"
        check.expect("page_cache_after_write", holds, "write" if ctx.spec.shared else "old")
    flags = "+".join(check.facts["write_fault"]["flags"]) if wp_fault else "none"
    kind = fault.fault_kind if fault else "none"
    return check.observation(
        key=f"fault={kind} then write={flags} data={'ok' if written else 'BAD'}"
    )
