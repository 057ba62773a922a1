"""How long the uffd-wp bit lives: it must go when the uffd is closed and when mremap()
moves a range whose uffd does not follow it (no EVENT_REMAP). Both were kernel bugs with
CVEs; the pagemap bit (57, 5.14) is what shows them, so both skip where it is invisible.
"""

from __future__ import annotations

import signal
from typing import Any

from .. import kpageflags, thp
from .. import syscalls as sc
from ..abi import Feature, RegisterMode
from ..isolation import run_in_child
from ..maps import uffd_vm_flags
from ..memory import PAGE_SIZE, MemoryKind, Region, Reservation, allocate, pmd_size
from ..pagemap import region_view, wp_pages
from ..system import kernel_warned
from ..uffd import Userfaultfd
from .checks import Checks
from .context import Background, Context
from .huge import first_touch_thps, pmd_mapped_bytes
from .model import ALL_KINDS, THP_KINDS, KnownBug, NonEmpty, Observation, Skip
from .registry import scenario
from .wp import FINISH_TIMEOUT, SEED, pages_for, protected_pages, require_pagemap_uffd_wp

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
    "userfaultfd: reset ptes when close() for wr-protected ones', 6.9, CVE-2024-36881); "
    "on PMD-mapped THPs too",
    memory=ALL_KINDS + THP_KINDS,
    modes=RegisterMode.WP,
    known_bug=WP_CLOSE_FIX.showing(wp_pages_after_close=NonEmpty()),
)
def wp_cleared_on_close(ctx: Context) -> Observation:
    features = ctx.mode_features(RegisterMode.WP)
    require_pagemap_uffd_wp(ctx)
    pages = pages_for(ctx, 4, 3)
    region = ctx.region(pages)
    populated = (pages - 1) * region.page_size  # the last page stays unpopulated
    thp: dict[str, Any] = {}
    if ctx.spec.thp == "pmd":
        thp = first_touch_thps(
            region, ctx.spec.family, lambda: region.fill_indexed(SEED, 0, pages - 1), populated
        )
    else:
        region.fill_indexed(SEED, 0, pages - 1)
    uffd = ctx.uffd(features)
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    before = region_view(region)
    protected = wp_pages(region)
    uffd.close()
    after = region_view(region)
    left = wp_pages(region)
    pmd_after = pmd_mapped_bytes(region.addr, region.length)
    vma_flags = uffd_vm_flags(region.addr, region.end)
    writer = Background(region.touch, range(pages - 1), write=True)
    write_finished = writer.finished(FINISH_TIMEOUT)

    check = Checks({"pagemap_before_close": before})
    if thp:
        check.expect("pmd_mapped_bytes", thp["pmd_mapped_bytes"], populated)
        check.fact("pmd_mapped_bytes_after_close", pmd_after)
    check.expect("wp_pages_before_close", protected, protected_pages(ctx, pages))
    check.fact("pagemap_after_close", after)
    check.expect("wp_pages_after_close", left, [])
    check.expect("uffd_vm_flags_after_close", vma_flags, [])
    check.expect("write_after_close_finished", write_finished, True)
    check.expect(
        "data_intact",
        write_finished and region.find_indexed_mismatch(SEED, 0, pages - 1) is None,
        True,
    )
    return check.observation(f"wp pages after close={left} (before {protected})")


# --- wp-cleared-on-mremap ---------------------------------------------------------------------

WP_MREMAP_FIX = KnownBug(
    fixed_in="6.13",
    fix="mm: clear uffd-wp PTE/PMD state on mremap()",
    signature="after mremap() of a write-protected range registered without EVENT_REMAP "
    "the VMA loses VM_UFFD_WP but the moved PTEs keep the uffd-wp bit (CVE-2025-21696)",
    # CVE record (kernel CNA, CVE-2025-21696): unaffected from 6.12.11.
    backports=("6.12.11",),
)


def _layout(kind: MemoryKind, folio: int) -> tuple[int, int, int]:
    """(page size, pages, populated pages) of the range wp-cleared-on-mremap protects:
    three pages with the last left empty; one populated page where the kind maps at most
    one (1 GiB); an mTHP kind maps one ``folio``-sized large folio, every 4K page of it
    populated."""
    if kind.spec.thp == "mthp":
        pages = folio // kind.page_size
        return kind.page_size, pages, pages
    pages = kind.spec.pages(3)
    return kind.page_size, pages, max(pages - 1, 1)


def _protect_and_move(
    kind: MemoryKind, features: Feature, write: bool, user_mode_only: bool, folio: int = 0
) -> dict[str, Any]:
    """Protect a region (``_layout``), mremap it elsewhere, and report what the new range
    holds. With ``write`` also write every moved page (run this in a child: a stale marker
    is the kind of thing that could SIGBUS or hang)."""
    page, pages, populated = _layout(kind, folio)
    align = folio or page
    with (
        Reservation(pages * page, align=align) as parking,
        allocate(kind, pages, align=align) as region,
        Userfaultfd.open(features, user_mode_only=user_mode_only) as uffd,
    ):
        # A 1 GiB page is faulted in whole by its first byte: its data is the first 4 KiB
        # (filling and checking all of it costs seconds, minutes in a TCG guest).
        def data() -> Region:  # a view follows no mremap: take it afresh
            return region.view(PAGE_SIZE) if kind.spec.max_pages else region

        filled = 1 if kind.spec.max_pages else populated
        data().fill_indexed(SEED, 0, filled)
        facts: dict[str, Any] = {}
        if kind.spec.thp:
            facts["folio_sizes_before"] = huge_folios(region, populated)
        uffd.register(region, mode=RegisterMode.WP)
        uffd.writeprotect(region)
        old = region.addr
        facts["wp_pages_before"] = wp_pages(region)
        region.mremap(region.length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, parking.start)
        facts["moved"] = region.addr != old
        facts["pagemap_after_move"] = region_view(region)
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
                facts["write_finished"] and data().find_indexed_mismatch(SEED, 0, filled) is None
            )
        return facts


def huge_folios(region: Region, populated: int) -> list[int]:
    """Folio sizes mapping the populated part of a THP region (kpageflags, root)."""
    addr, length = region.span(0, populated)
    return [size for size in kpageflags.folio_sizes(addr, length) if size]


def _mremap_case(ctx: Context, features: Feature, folio: int = 0) -> Checks:
    user_mode_only = ctx.system.user_mode_only
    # A 1 GiB page costs its zeroing: one pass, in the child, gives every fact.
    moved = (
        None
        if ctx.spec.max_pages
        else _protect_and_move(ctx.memory, features, False, user_mode_only, folio)
    )
    outcome = run_in_child(
        _protect_and_move,
        ctx.memory,
        features,
        True,
        user_mode_only,
        folio,
        timeout=max(10.0, ctx.timeout / 2),
    )
    access: dict[str, Any] = {"child": outcome.status}
    if outcome.status == "ok":
        access.update(
            {k: outcome.value[k] for k in ("write_finished", "data_intact", "wp_pages_after_move")}
        )
    elif outcome.signal:
        access["signal"] = signal.Signals(outcome.signal).name
    elif outcome.exception is not None:
        access["error"] = str(outcome.exception)
    write_ok = access.get("write_finished") is True and access.get("data_intact") is True

    if moved is None:
        moved = dict(outcome.value) if outcome.status == "ok" else {}
    _, pages, populated = _layout(ctx.memory, folio)
    check = Checks(moved)
    if ctx.spec.thp:
        # A THP that could not be allocated leaves the case without its subject.
        folio_size = folio or ctx.page_size
        if moved.get("folio_sizes_before") != [folio_size] * (
            populated * ctx.page_size // folio_size
        ):
            raise Skip(
                f"no {folio_size >> 10} KiB THP could be allocated (folios "
                f"{moved.get('folio_sizes_before')}): memory too fragmented"
            )
    protected = protected_pages(ctx, pages) if populated < pages else list(range(pages))
    check.expect("moved", moved.get("moved"), True)
    check.expect("wp_pages_before", moved.get("wp_pages_before"), protected)
    check.expect("wp_pages_after_move", moved.get("wp_pages_after_move"), [])
    check.expect("uffd_vm_flags_after_move", moved.get("uffd_vm_flags_after_move"), [])
    check.expect("events", moved.get("events"), 0)
    check.expect("kernel_warned", moved.get("kernel_warned"), False)
    check.expect_that(
        "write_in_child",
        access,
        write_ok,
        "the child's write to every moved page to finish with the data intact",
    )
    check.fact("write_ok", write_ok)
    check.fact("write_outcome", "ok" if write_ok else access.get("signal") or access["child"])
    return check


@scenario(
    id="wp-cleared-on-mremap",
    title="uffd-wp bits are cleared by mremap() without EVENT_REMAP",
    checks="mremap() of a write-protected range whose uffd lacks EVENT_REMAP drops the "
    "registration, so the moved PTEs must lose their uffd-wp bit and a write must neither "
    "fault nor SIGBUS (fixed by 'mm: clear uffd-wp PTE/PMD state on mremap()', 6.13, "
    "CVE-2025-21696)",
    memory=ALL_KINDS + THP_KINDS + ("anon-mthp", "shmem-mthp", "hugetlb-1g", "hugetlb-1g-private"),
    modes=RegisterMode.WP,
    uses=("mremap",),
    known_bug=WP_MREMAP_FIX.showing(wp_pages_after_move=NonEmpty()),
)
def wp_cleared_on_mremap(ctx: Context) -> Observation:
    features = ctx.mode_features(RegisterMode.WP)
    require_pagemap_uffd_wp(ctx)
    if ctx.spec.thp and not kpageflags.readable():
        raise Skip("telling THP folios apart needs /proc/kpageflags (root)")
    if ctx.spec.thp != "mthp":
        check = _mremap_case(ctx, features)
        return check.observation(
            f"wp pages after mremap={check.facts['wp_pages_after_move']}, write in child: "
            + check.facts["write_outcome"]
        )
    # One case per mTHP size: each a PTE-mapped large folio of that size.
    check = Checks()
    stale = []
    for folio in thp.mthp_sizes(pmd_size()):
        case = _mremap_case(ctx, features, folio)
        check.nest(f"{folio >> 10}k", case)
        if not case.ok:
            stale.append(f"{folio >> 10}k")
    # The known bug's signature reads the first size's facts; every size shows it alike.
    check.fact("wp_pages_after_move", next(iter(check.facts.values()))["wp_pages_after_move"])
    sizes = ",".join(f"{folio >> 10}k" for folio in thp.mthp_sizes(pmd_size()))
    return check.observation(f"mTHP {sizes}: " + (f"stale on {stale}" if stale else "all cleared"))
