"""uffd-wp on swapped-out pages: the protection of a page MADV_PAGEOUT swapped out lives
in its page table entry, not in the page, so mremap() and fork() must carry it or drop it
exactly as they do for present pages.

An anonymous page (also a private copy in a MAP_PRIVATE file mapping) leaves a swap entry
carrying the uffd-wp bit (pte_swp_mkuffd_wp(), "userfaultfd: wp: support swap and page
migration", 5.7); a shmem page leaves a uffd-wp PTE marker where it was mapped (5.19), its
data in swap behind the page cache. pagemap shows either as SWAPPED with bit 57.
"""

from __future__ import annotations

from typing import Any

from .. import syscalls as sc
from ..abi import Feature, RegisterMode, flag_names
from ..events import PagefaultEvent, RemapEvent
from ..maps import read_smaps_range, uffd_vm_flags
from ..memory import PAGE_SIZE, Region
from ..pagemap import region_view, wp_pages
from ..uffd import Userfaultfd
from .checks import Checks
from .context import Background, Context, next_event
from .model import NonEmpty, Observation, Skip
from .registry import scenario
from .wp import (
    EVENT_TIMEOUT,
    FINISH_TIMEOUT,
    SEED,
    UNPROTECT,
    WP_WRITE,
    require_pagemap_uffd_wp,
)
from .wp_cleared import WP_MREMAP_FIX
from .wp_fork import fork_and_inspect, judge_fork

PAGES = 2


def swapped_bytes(region: Region) -> int:
    """What smaps counts as swapped out in the region's VMAs: anonymous swap entries, and
    for a shared shmem VMA the object's swapped pages (shmem_swap_usage())."""
    return sum(vma.swap for vma in read_smaps_range(region.addr, region.end))


def _protect_and_swap_out(region: Region, uffd: Userfaultfd) -> dict[str, Any]:
    """Populate, register and write-protect every page, then swap them all out."""
    region.fill_indexed(SEED)
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    region.madvise(sc.MADV_PAGEOUT)
    swapped = swapped_bytes(region)
    if swapped != region.length:
        raise Skip(
            f"MADV_PAGEOUT swapped out {swapped} of {region.length} bytes (swap full, or "
            "reclaim refused the pages)"
        )
    return {"pagemap_swapped": region_view(region), "wp_pages_swapped": wp_pages(region)}


def _write_and_serve(uffd: Userfaultfd, region: Region, registered: bool) -> dict[str, Any]:
    """Write every page (each swaps in first). On a range still registered, each write
    must raise a WP fault, resolved here by unprotecting its page."""
    writer = Background(region.touch, None, write=True)
    faults: list[dict[str, Any]] = []
    while registered and len(faults) < region.pages:
        event = next_event(uffd, timeout=EVENT_TIMEOUT)
        if event is None:
            break
        inside = isinstance(event, PagefaultEvent) and region.addr <= event.address < region.end
        faults.append(
            {
                "event": type(event).__name__,
                "flags": flag_names(event.flags) if isinstance(event, PagefaultEvent) else None,
                "page": region.page_index(event.address) if inside else None,
            }
        )
        if not inside:
            break
        uffd.writeprotect(*region.span(faults[-1]["page"]), mode=UNPROTECT)
    finished = writer.finished(FINISH_TIMEOUT)
    faults += [{"event": type(event).__name__} for event in uffd.read_events(timeout=0)]
    return {
        "faults": faults,
        "write_finished": finished,
        "data_intact": finished and region.find_indexed_mismatch(SEED) is None,
        "wp_pages_after_write": wp_pages(region),
    }


def _mremap_variant(ctx: Context, event_remap: bool) -> dict[str, Any]:
    region = ctx.region(PAGES)
    # Address space to move into, in the kind's page size (2 MiB on the THP kinds).
    parking = ctx.region((PAGES + 2) * ctx.page_size // PAGE_SIZE, kind="anon", align=ctx.page_size)
    features = ctx.mode_features(RegisterMode.WP)
    uffd = ctx.uffd(features | Feature.EVENT_REMAP if event_remap else features)
    facts = _protect_and_swap_out(region, uffd)
    old = region.addr
    destination = parking.addr + ctx.page_size
    # With EVENT_REMAP, mremap() waits until the REMAP message is read (the registration
    # moves with the VMA: mremap_userfaultfd_prep()); without, the new VMA is unregistered.
    mover = Background(
        region.mremap, region.length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, destination
    )
    event = next_event(uffd, timeout=EVENT_TIMEOUT) if event_remap else None
    mover.value(FINISH_TIMEOUT)
    facts["moved"] = region.addr == destination
    if event_remap:
        facts["event"] = type(event).__name__ if event is not None else None
        facts["event_matches"] = event == RemapEvent(old, destination, region.length)
    facts["pagemap_after_move"] = region_view(region)
    facts["wp_pages_after_move"] = wp_pages(region)
    facts["swapped_after_move"] = swapped_bytes(region)
    facts["uffd_vm_flags_after_move"] = uffd_vm_flags(region.addr, region.end)
    facts.update(_write_and_serve(uffd, region, registered=event_remap))
    uffd.close()
    return facts


def _judge_mremap(ctx: Context, facts: dict[str, Any], event_remap: bool) -> Checks:
    check = Checks(facts)
    every_page = list(range(PAGES))
    check.expect("wp_pages_swapped", facts["wp_pages_swapped"], every_page)
    check.expect("moved", facts["moved"], True)
    if event_remap:
        check.expect("event", facts["event"], RemapEvent.__name__)
        check.expect("event_matches", facts["event_matches"], True)
    # mremap moves swap entries and markers as they are: nothing is swapped in.
    check.expect("swapped_after_move", facts["swapped_after_move"], PAGES * ctx.page_size)
    check.expect(
        "wp_pages_after_move", facts["wp_pages_after_move"], every_page if event_remap else []
    )
    check.expect(
        "uffd_vm_flags_after_move", facts["uffd_vm_flags_after_move"], ["uw"] if event_remap else []
    )
    wanted_faults = (
        [
            {"event": "PagefaultEvent", "flags": flag_names(WP_WRITE), "page": page}
            for page in every_page
        ]
        if event_remap
        else []
    )
    check.expect("faults", facts["faults"], wanted_faults)
    check.expect("write_finished", facts["write_finished"], True)
    check.expect("data_intact", facts["data_intact"], True)
    check.expect("wp_pages_after_write", facts["wp_pages_after_write"], [])
    return check


def _fork_variant(ctx: Context, event_fork: bool) -> dict[str, Any]:
    region = ctx.region(PAGES)
    features = ctx.mode_features(RegisterMode.WP)
    uffd = ctx.uffd(features | Feature.EVENT_FORK if event_fork else features)
    # The handler's helper forks before the pages exist: MADV_PAGEOUT skips a page
    # another process maps too.
    facts = fork_and_inspect(region, uffd, event_fork, lambda: _protect_and_swap_out(region, uffd))
    facts["parent_swapped_after_fork"] = swapped_bytes(region)
    uffd.close()  # no later fork may wait for an event of this uffd
    region.close()
    return facts


def _judge_fork(ctx: Context, name: str, facts: dict[str, Any]) -> Checks:
    check = judge_fork(name, facts, bits_visible=True)
    check.expect("wp_pages_swapped", facts["wp_pages_swapped"], list(range(PAGES)))
    check.expect(
        "parent_wp_pages_after_fork", facts["parent_wp_pages_after_fork"], list(range(PAGES))
    )
    # The parent's swap entries are its own whatever the child did; a shmem page the
    # child's write brought back is the object's, so nothing of it stays in swap.
    if ctx.spec.shared:
        check.fact("parent_swapped_after_fork", facts["parent_swapped_after_fork"])
    else:
        check.expect(
            "parent_swapped_after_fork", facts["parent_swapped_after_fork"], PAGES * ctx.page_size
        )
    return check


@scenario(
    id="wp-swap",
    title="uffd-wp on swapped-out pages across mremap() and fork()",
    checks="a write-protected page swapped out by MADV_PAGEOUT keeps uffd-wp on its swap "
    "entry or PTE marker; mremap() moves it with EVENT_REMAP (the write after swap-in "
    "faults) and clears it without ('mm: clear uffd-wp PTE/PMD state on mremap()', 6.13); "
    "fork() gives the child the bit only with EVENT_FORK ('mm/userfaultfd: fix uffd-wp "
    "special cases for fork()', 5.13)",
    # Not shmem-thp: MADV_PAGEOUT swaps out none of a PMD-mapped shmem THP (measured on
    # Debian's 7.3 with zram swap: 0 of 4 MiB), so the pair could never run.
    memory=("anon", "shmem", "memfd", "memfd-private", "anon-thp"),
    modes=RegisterMode.WP,
    features=Feature.EVENT_REMAP | Feature.EVENT_FORK,
    uses=("mremap",),
    known_bug=WP_MREMAP_FIX.showing({"mremap.without_event_remap.wp_pages_after_move": NonEmpty()}),
)
def wp_swap(ctx: Context) -> Observation:
    require_pagemap_uffd_wp(ctx)  # first: a reason naming the release that brought it
    ctx.require_swap()
    check = Checks()
    remap = Checks()
    for event_remap in (False, True):
        name = "with_event_remap" if event_remap else "without_event_remap"
        remap.nest(name, _judge_mremap(ctx, _mremap_variant(ctx, event_remap), event_remap))
    check.nest("mremap", remap)
    fork = Checks()
    for event_fork in (False, True):
        name = "with_event_fork" if event_fork else "without_event_fork"
        fork.nest(name, _judge_fork(ctx, name, _fork_variant(ctx, event_fork)))
    check.nest("fork", fork)
    moved = {name: facts.get("wp_pages_after_move") for name, facts in remap.facts.items()}
    inherited = {name: facts.get("child_wp_pages") for name, facts in fork.facts.items()}
    return check.observation(f"wp pages after mremap {moved}, in child {inherited}")
