"""UFFDIO_MOVE (6.8): remap anonymous pages into a registered range without copying.

The THP checks drive the two paths later fixes touched: moving one page out of a
transparent huge page (split_folio in move_pages_pte) and moving a whole PMD
(move_pages_huge_pmd). The 6.14 UFFDIO_MOVE fixes ("fix kernel BUG when userfaultfd_move
encounters swapcache", "do not block on locking a large folio with raised refcount",
"fix PTE unmapping stack-allocated PTE copies") need swap, a concurrent reference holder
or CONFIG_HIGHPTE to show, so no known bug is encoded here.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from functools import partial
from typing import Any

from .. import syscalls as sc
from ..abi import Feature, Ioctl, MoveMode, RegisterMode
from ..errors import UffdError
from ..events import PagefaultEvent
from ..maps import read_smaps_range
from ..memory import PAGE_SIZE, MemoryKind, Region, Reservation, pmd_size
from ..pagemap import Pagemap, PagemapFlag
from ..uffd import Userfaultfd
from .checks import Checks
from .context import Background, Context, next_event
from .huge import first_touch_thps, folio_runs, pmd_mapped_bytes
from .model import Observation
from .registry import scenario
from .wp import EVENT_TIMEOUT, FINISH_TIMEOUT, pages_for

SEED = 0x30E
PAGES = 8


def _pagemap(addr: int, pages: int) -> list[dict[str, Any]]:
    with Pagemap() as pagemap:
        entries = pagemap.entries(addr, pages * PAGE_SIZE)
    return [{"present": e.present, "pfn": e.pfn} for e in entries]


def _attempt(call) -> dict[str, Any]:
    """Run one UFFDIO_MOVE; its result as facts: bytes moved, or errno and partial count."""
    try:
        return {"result": "ok", "bytes": call()}
    except UffdError as exc:
        return {"result": exc.errno_name, "bytes": exc.done}


def _bulk(ctx: Context, uffd: Userfaultfd, dst: Region) -> dict[str, Any]:
    src = ctx.region(PAGES)
    src.fill_indexed(SEED)
    before = _pagemap(src.addr, PAGES)
    moved = _attempt(lambda: uffd.move(dst.addr, src.addr, PAGES * PAGE_SIZE))
    after_dst = _pagemap(dst.addr, PAGES)
    after_src = _pagemap(src.addr, PAGES)
    src_empty = not any(e["present"] for e in after_src)
    dst_present = all(e["present"] for e in after_dst)
    return {
        **moved,
        # Only read dst when every page is there: a missing one would block in a fault.
        "dst_data_intact": dst_present and dst.find_indexed_mismatch(SEED, 0, PAGES) is None,
        "dst_present": dst_present,
        # Root sees PFNs: the same frames now back dst (a remap, not a copy).
        "pfns_moved_not_copied": [e["pfn"] for e in before] == [e["pfn"] for e in after_dst]
        if before[0]["pfn"]
        else None,
        "src_unmapped": src_empty,
        "src_reads_zero": src_empty and src.verify(b"\0"),
    }


def _fault_driven(ctx: Context, uffd: Userfaultfd, dst: Region, page: int) -> dict[str, Any]:
    src = ctx.region(1)
    src.fill(b"moved-on-fault..")
    toucher = Background(dst.read, page * PAGE_SIZE, 16)
    fault = next_event(uffd, timeout=2.0)
    moved = {"result": "no fault", "bytes": None}
    if isinstance(fault, PagefaultEvent):
        moved = _attempt(lambda: uffd.move(fault.address & ~(PAGE_SIZE - 1), src.addr, PAGE_SIZE))
    finished = toucher.finished(2.0)
    if not finished:  # never leave the toucher blocked
        uffd.zeropage(*dst.span(page))
        toucher.finished(2.0)
    return {
        "fault": fault.fault_kind if isinstance(fault, PagefaultEvent) else None,
        "fault_page": dst.page_index(fault.address) if isinstance(fault, PagefaultEvent) else None,
        **moved,
        "toucher_finished": finished,
        "toucher_read": toucher.value(0).decode(errors="replace") if finished else None,
    }


def _errors(ctx: Context, uffd: Userfaultfd, dst: Region) -> dict[str, Any]:
    src = ctx.region(4)
    src.fill(b"e", 0, PAGE_SIZE)  # page 0 populated, page 1 a hole never read
    facts: dict[str, Any] = {}
    # dst page 0 was populated by the bulk move
    facts["onto_populated_dst"] = _attempt(lambda: uffd.move(dst.addr, src.addr, PAGE_SIZE))
    facts["src_kept_after_eexist"] = _pagemap(src.addr, 1)[0]["present"]
    # validate_move_areas(): the dst VMA must be registered with the uffd the ioctl is
    # issued on, else EINVAL (not ENOENT: the VMA exists).
    plain = ctx.region(1)
    facts["into_unregistered_dst"] = _attempt(lambda: uffd.move(plain.addr, src.addr, PAGE_SIZE))
    other = ctx.region(1)
    ctx.uffd(ctx.mode_features(RegisterMode.MISSING)).register(other, mode=RegisterMode.MISSING)
    facts["into_other_uffds_dst"] = _attempt(lambda: uffd.move(other.addr, src.addr, PAGE_SIZE))
    facts["src_kept_after_einval"] = _pagemap(src.addr, 1)[0]["present"]
    hole_dst = dst.page_addr(PAGES + 2)
    facts["from_src_hole"] = _attempt(lambda: uffd.move(hole_dst, src.addr + PAGE_SIZE, PAGE_SIZE))
    facts["dst_still_empty_after_enoent"] = not _pagemap(hole_dst, 1)[0]["present"]
    # pages 0 and 2 populated, 1 and 3 holes
    src.fill(b"h", 2 * PAGE_SIZE, PAGE_SIZE)
    holes_dst = dst.page_addr(PAGES + 3)
    facts["allow_src_holes"] = _attempt(
        lambda: uffd.move(holes_dst, src.addr, 4 * PAGE_SIZE, MoveMode.ALLOW_SRC_HOLES)
    )
    facts["allow_src_holes_dst_present"] = [e["present"] for e in _pagemap(holes_dst, 4)]
    # a populated page in the middle of dst: the move stops there (EAGAIN, 1 page done)
    src.fill(b"p", 0, 3 * PAGE_SIZE)
    middle_dst = dst.page_addr(PAGES + 7)
    uffd.zeropage(middle_dst + PAGE_SIZE, PAGE_SIZE)
    facts["stops_at_populated_dst"] = _attempt(
        lambda: uffd.move(middle_dst, src.addr, 3 * PAGE_SIZE)
    )
    return facts


def _pmd_aligned(rooms: ExitStack, count: int) -> Region:
    """``count`` PMD-aligned PMDs of private anonymous memory between PROT_NONE guards.
    The reservation (owned by ``rooms``) owns the address space; the Region only views it."""
    size = pmd_size()
    room = rooms.enter_context(Reservation(count * size, align=size))
    flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED
    addr = sc.mmap(room.start, count * size, sc.PROT_RW, flags)
    return Region(addr, count * size, MemoryKind.ANON, page_size=PAGE_SIZE)


def _thp(ctx: Context, uffd: Userfaultfd) -> dict[str, Any]:
    """Move out of a transparent huge page: one 4 KiB page (the kernel splits the folio)
    and a whole PMD (moved as one huge entry)."""
    mode = ctx.system.thp_enabled
    if mode in (None, "never"):
        return {"skipped": "transparent hugepages disabled"}
    with ExitStack() as rooms:
        return _thp_moves(uffd, rooms, mode)


def _thp_moves(uffd: Userfaultfd, rooms: ExitStack, mode: str) -> dict[str, Any]:
    size = pmd_size()
    src = _pmd_aligned(rooms, 2)
    src.madvise(sc.MADV_HUGEPAGE)
    src.fill_indexed(SEED)
    dst = _pmd_aligned(rooms, 1)
    uffd.register(dst)
    expected_page = src.read(5 * PAGE_SIZE, PAGE_SIZE)
    expected_pmd = src.read(size, size)  # the second PMD, moved whole below
    huge = sum(vma.counters.anon_huge_pages for vma in read_smaps_range(src.addr, src.end))
    facts: dict[str, Any] = {"thp_enabled": mode, "src_anon_huge_bytes": huge}
    facts["split_move"] = _attempt(lambda: uffd.move(dst.addr, src.addr + 5 * PAGE_SIZE, PAGE_SIZE))
    facts["split_move_data_ok"] = (
        _pagemap(dst.addr, 1)[0]["present"] and dst.read(0, PAGE_SIZE) == expected_page
    )
    facts["split_neighbours_intact"] = (
        src.find_indexed_mismatch(SEED, 0, 5) is None
        and src.find_indexed_mismatch(SEED, 6, size // PAGE_SIZE - 6) is None
    )
    whole = _pmd_aligned(rooms, 1)
    uffd.register(whole)
    second = src.addr + size
    facts["pmd_move"] = _attempt(lambda: uffd.move(whole.addr, second, size))
    pages = size // PAGE_SIZE
    # Read dst only when every page is there: a missing one would block in a fault.
    facts["pmd_move_data_ok"] = (
        all(e["present"] for e in _pagemap(whole.addr, pages)) and whole.read() == expected_pmd
    )
    facts["pmd_move_src_unmapped"] = not any(e["present"] for e in _pagemap(second, pages))
    facts["pmd_move_dst_anon_huge_bytes"] = sum(
        vma.counters.anon_huge_pages for vma in read_smaps_range(whole.addr, whole.end)
    )
    return facts


@scenario(
    id="move",
    title="UFFDIO_MOVE",
    checks="UFFDIO_MOVE (6.8) remaps anonymous pages into a registered range: a bulk move "
    "keeps the data and frames and leaves the source empty, a missing fault can be "
    "resolved by a move, a populated dst gives EEXIST, a dst not registered with this uffd "
    "EINVAL, a source hole ENOENT unless "
    "ALLOW_SRC_HOLES, a populated page part way stops the move with EAGAIN and the count",
    memory=("anon",),
    modes=RegisterMode.MISSING,
    features=Feature.MOVE,
    min_kernel="6.8",
)
def move(ctx: Context) -> Observation:
    uffd = ctx.uffd(Feature.MOVE | ctx.mode_features(RegisterMode.MISSING))
    dst = ctx.region(2 * PAGES + 4)
    allowed = uffd.register(dst, mode=RegisterMode.MISSING)
    check = Checks({"move_ioctl_offered": bool(allowed & Ioctl.MOVE)})
    page = PAGE_SIZE
    bulk = _bulk(ctx, uffd, dst)
    check.expect_fields(
        "bulk",
        bulk,
        {
            "result": "ok",
            "bytes": PAGES * page,
            "dst_data_intact": True,
            "dst_present": True,
            "src_unmapped": True,
            "src_reads_zero": True,
        },
    )
    if bulk["pfns_moved_not_copied"] is False:  # None: no PFNs without CAP_SYS_ADMIN
        check.problem("bulk: dst frames differ from the source frames (copied, not moved)")
    check.expect_fields(
        "fault_driven",
        _fault_driven(ctx, uffd, dst, PAGES + 1),
        {
            "fault": "missing",
            "fault_page": PAGES + 1,
            "result": "ok",
            "toucher_finished": True,
            "toucher_read": "moved-on-fault..",
        },
    )
    errors = _errors(ctx, uffd, dst)
    # move_pages(): EEXIST onto a populated dst, ENOENT from a src hole unless
    # UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES; stopping part way gives EAGAIN with uffdio_move.move
    # holding the bytes moved.
    check.expect_fields(
        "errors",
        errors,
        {
            "onto_populated_dst": {"result": "EEXIST", "bytes": 0},
            "src_kept_after_eexist": True,
            "into_unregistered_dst": {"result": "EINVAL", "bytes": 0},
            "into_other_uffds_dst": {"result": "EINVAL", "bytes": 0},
            "src_kept_after_einval": True,
            "from_src_hole": {"result": "ENOENT", "bytes": 0},
            "dst_still_empty_after_enoent": True,
            "allow_src_holes": {"result": "ok", "bytes": 4 * page},
            "allow_src_holes_dst_present": [True, False, True, False],
            "stops_at_populated_dst": {"result": "EAGAIN", "bytes": page},
        },
    )
    thp = _thp(ctx, uffd)
    check.expect_fields(
        "thp",
        thp,
        {}
        if "skipped" in thp
        else {
            "split_move.result": "ok",
            "split_move_data_ok": True,
            "split_neighbours_intact": True,
            "pmd_move.result": "ok",
            "pmd_move_data_ok": True,
            "pmd_move_src_unmapped": True,
        },
    )
    key = (
        f"bulk={bulk['result']} data={'ok' if bulk['dst_data_intact'] else 'BAD'}; "
        f"onto populated={errors['onto_populated_dst']['result']}, "
        f"src hole={errors['from_src_hole']['result']}, "
        f"holes allowed={errors['allow_src_holes']['result']}"
    )
    return check.observation(key=key)


# --- move-volume, move-pmd-split --------------------------------------------------------------


def _serve_moves(
    uffd: Userfaultfd, dst: Region, src: Region, toucher: Background, limit: int
) -> dict[str, Any]:
    """Resolve each missing fault of ``toucher`` with a UFFDIO_MOVE of the source page at
    the same offset (a page of ``dst``'s size: a PMD on the THP kinds), until it finishes
    or ``limit`` faults were served."""
    kinds: set[str] = set()
    faults, moved = 0, 0
    failures: list[dict[str, Any]] = []
    deadline = time.monotonic() + EVENT_TIMEOUT
    while faults < limit and not toucher.finished(0) and time.monotonic() < deadline:
        event = next_event(uffd, timeout=0.02)
        if not isinstance(event, PagefaultEvent):
            continue
        deadline = time.monotonic() + EVENT_TIMEOUT
        faults += 1
        kinds.add(event.fault_kind)
        offset = dst.page_index(event.address) * dst.page_size
        outcome = _attempt(partial(uffd.move, dst.addr + offset, src.addr + offset, dst.page_size))
        if outcome["result"] == "ok":
            moved += outcome["bytes"]
        else:
            failures.append({"page": offset // dst.page_size, **outcome})
    return {"faults": faults, "fault_kinds": sorted(kinds), "bytes": moved, "failures": failures}


def _populate_source(ctx: Context, src: Region) -> dict[str, Any]:
    """Fill ``src`` with fill_indexed(SEED) by its first touch (THPs on a PMD-THP kind)."""
    if ctx.spec.thp != "pmd":
        src.fill_indexed(SEED)
        return {"pmd_mapped_bytes": pmd_mapped_bytes(src.addr, src.length)}
    return first_touch_thps(src, ctx.spec.family, lambda: src.fill_indexed(SEED))


def _present_pages(addr: int, length: int) -> int:
    present = int(PagemapFlag.PRESENT)
    with Pagemap() as pagemap:
        return sum(1 for entry in pagemap.raw(addr, length) if entry & present)


@scenario(
    id="move-volume",
    title="Missing faults served by UFFDIO_MOVE, in volume",
    checks="a toucher's missing faults over 16 PMDs of THPs (256 small pages on anon) are "
    "each resolved by a UFFDIO_MOVE (6.8) of the source page at the same offset: the data "
    "arrives intact, the source is left empty, and a PMD-aligned move of a PMD-mapped THP "
    "moves the PMD (move_pages_huge_pmd()), so the destination holds the same THPs",
    memory=("anon", "anon-thp"),
    modes=RegisterMode.MISSING,
    features=Feature.MOVE,
    min_kernel="6.8",
)
def move_volume(ctx: Context) -> Observation:
    pages = pages_for(ctx, 256, 16)
    uffd = ctx.uffd(Feature.MOVE | ctx.mode_features(RegisterMode.MISSING))
    src = ctx.region(pages)
    check = Checks({"pages": pages, "page_size": src.page_size})
    source = _populate_source(ctx, src)
    source["folios"] = folio_runs(src.addr, src.length)
    check.fact("source", source)
    if ctx.spec.thp == "pmd":
        check.expect("source_pmd_mapped_bytes", source["pmd_mapped_bytes"], src.length)
    dst = ctx.region(pages)
    uffd.register(dst, mode=RegisterMode.MISSING)
    toucher = Background(dst.touch)
    served = _serve_moves(uffd, dst, src, toucher, pages)
    finished = toucher.finished(FINISH_TIMEOUT)
    check.expect_fields(
        "served",
        served,
        {"faults": pages, "fault_kinds": ["missing"], "bytes": dst.length, "failures": []},
    )
    check.expect("toucher_finished", finished, True)
    # Read dst only when the toucher got through: a page still missing would block.
    check.expect("data_intact", finished and dst.find_indexed_mismatch(SEED) is None, True)
    check.expect(
        "dst_pmd_mapped_bytes",
        pmd_mapped_bytes(dst.addr, dst.length),
        source["pmd_mapped_bytes"],
    )
    if source["folios"] is not None:
        check.expect("dst_folios", folio_runs(dst.addr, dst.length), source["folios"])
    check.expect("src_present_pages", _present_pages(src.addr, src.length), 0)
    return check.observation(
        f"{served['faults']} faults moved {served['bytes'] >> 10} KiB, "
        f"dst PMD-mapped {check.facts['dst_pmd_mapped_bytes'] >> 20} MiB, "
        f"data={'ok' if check.facts['data_intact'] else 'BAD'}"
    )


def _split_into_nohugepage(
    ctx: Context, uffd: Userfaultfd, src: Region, pmds: int
) -> dict[str, Any]:
    """The selftests' move-pmd-split: the faults of a MADV_NOHUGEPAGE destination come
    from do_anonymous_page(), which has allocated a page table first; the dst PMD is then
    not none, so move_pages() splits the source PMD and move_pages_ptes() splits the
    folio and moves its PTEs."""
    dst = ctx.region(pmds)
    dst.madvise(sc.MADV_NOHUGEPAGE)
    uffd.register(dst, mode=RegisterMode.MISSING)
    toucher = Background(dst.touch)
    served = _serve_moves(uffd, dst, src, toucher, pmds)
    finished = toucher.finished(FINISH_TIMEOUT)
    (vma,) = read_smaps_range(dst.addr, dst.end)
    return {
        "dst_nohugepage": "nh" in vma.vm_flags,
        "served": served,
        "toucher_finished": finished,
        "data_intact": finished and dst.find_indexed_mismatch(SEED, 0, pmds) is None,
        "dst_pmd_mapped_bytes": pmd_mapped_bytes(dst.addr, dst.length),
        "dst_folios": folio_runs(dst.addr, dst.length),
        "src_present_pages": _present_pages(src.addr, pmds * src.page_size),
    }


def _split_into_unaligned(
    ctx: Context, uffd: Userfaultfd, src: Region, page: int
) -> dict[str, Any]:
    """One PMD of THP moved to a destination one small page past a PMD boundary:
    move_splits_huge_pmd() holds, so the source PMD is split and its PTEs are moved."""
    size = src.page_size
    expected = src.read(page * size, size)
    room = ctx.region(2)
    uffd.register(room, mode=RegisterMode.MISSING)
    dst = room.addr + PAGE_SIZE
    moved = _attempt(lambda: uffd.move(dst, src.addr + page * size, size))
    present = _present_pages(dst, size)
    return {
        "move": moved,
        "dst_present_pages": present,
        # Read dst only when every page is there: a missing one would block in a fault.
        "data_intact": present == size // PAGE_SIZE and room.read(PAGE_SIZE, size) == expected,
        "dst_pmd_mapped_bytes": pmd_mapped_bytes(room.addr, room.length),
        "dst_folios": folio_runs(dst, size),
        "src_present_pages": _present_pages(src.addr + page * size, size),
    }


@scenario(
    id="move-pmd-split",
    title="UFFDIO_MOVE of a THP into a destination that cannot take a PMD",
    checks="UFFDIO_MOVE (6.8) of a PMD-mapped THP into a MADV_NOHUGEPAGE destination "
    "(faults served by moving each PMD-sized chunk) or to a destination not PMD-aligned "
    "splits the source PMD and its folio and moves the PTEs: data intact, the destination "
    "mapped by small pages, the source empty",
    memory=("anon-thp",),
    modes=RegisterMode.MISSING,
    features=Feature.MOVE,
    min_kernel="6.8",
)
def move_pmd_split(ctx: Context) -> Observation:
    pmds = 2
    small = ctx.page_size // PAGE_SIZE
    uffd = ctx.uffd(Feature.MOVE | ctx.mode_features(RegisterMode.MISSING))
    src = ctx.region(pmds + 1)
    source = first_touch_thps(src, ctx.spec.family, lambda: src.fill_indexed(SEED))
    check = Checks({"source": source})
    check.expect("source_pmd_mapped_bytes", source["pmd_mapped_bytes"], src.length)
    split = _split_into_nohugepage(ctx, uffd, src, pmds)
    unaligned = _split_into_unaligned(ctx, uffd, src, pmds)
    readable = split["dst_folios"] is not None
    check.expect_fields(
        "nohugepage_dst",
        split,
        {
            "dst_nohugepage": True,
            "served.faults": pmds,
            "served.fault_kinds": ["missing"],
            "served.bytes": pmds * ctx.page_size,
            "served.failures": [],
            "toucher_finished": True,
            "data_intact": True,
            "dst_pmd_mapped_bytes": 0,
            "src_present_pages": 0,
        }
        | ({"dst_folios": [[PAGE_SIZE, pmds * small]]} if readable else {}),
    )
    check.expect_fields(
        "unaligned_dst",
        unaligned,
        {
            "move": {"result": "ok", "bytes": ctx.page_size},
            "dst_present_pages": small,
            "data_intact": True,
            "dst_pmd_mapped_bytes": 0,
            "src_present_pages": 0,
        }
        | ({"dst_folios": [[PAGE_SIZE, small]]} if readable else {}),
    )
    return check.observation(
        f"NOHUGEPAGE dst: moved {split['served']['bytes'] >> 20} MiB, "
        f"dst PMD-mapped {split['dst_pmd_mapped_bytes']}; unaligned dst: "
        f"{unaligned['move']['result']}, dst PMD-mapped {unaligned['dst_pmd_mapped_bytes']}"
    )
