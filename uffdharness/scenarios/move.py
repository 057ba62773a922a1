"""UFFDIO_MOVE (6.8): remap anonymous pages into a registered range without copying.

The THP checks drive the two paths later fixes touched: moving one page out of a
transparent huge page (split_folio in move_pages_pte) and moving a whole PMD
(move_pages_huge_pmd). The 6.14 UFFDIO_MOVE fixes ("fix kernel BUG when userfaultfd_move
encounters swapcache", "do not block on locking a large folio with raised refcount",
"fix PTE unmapping stack-allocated PTE copies") need swap, a concurrent reference holder
or CONFIG_HIGHPTE to show, so no known bug is encoded here.
"""

from __future__ import annotations

import json
from typing import Any

from .. import syscalls as sc
from .._native import ffi, lib
from ..abi import Feature, Ioctl, MoveMode, RegisterMode
from ..errors import UffdError
from ..events import PagefaultEvent
from ..maps import read_smaps_range
from ..memory import HUGE_PAGE_SIZE, PAGE_SIZE, MemoryKind, Region
from ..pagemap import Pagemap
from ..uffd import Userfaultfd
from .context import Background, Context, next_event
from .model import Observation
from .registry import scenario

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


def _huge_aligned(ctx: Context, count: int) -> int:
    """A 2 MiB aligned address inside a fresh anon region with room for ``count`` PMDs."""
    room = ctx.region((count + 1) * HUGE_PAGE_SIZE // PAGE_SIZE)
    return (room.addr + HUGE_PAGE_SIZE - 1) & ~(HUGE_PAGE_SIZE - 1)


def _thp(ctx: Context, uffd: Userfaultfd) -> dict[str, Any]:
    """Move out of a transparent huge page: one 4 KiB page (the kernel splits the folio)
    and a whole PMD (moved as one huge entry)."""
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
        mode = setting.read().split("[")[1].split("]")[0]
    if mode == "never":
        return {"skipped": "transparent hugepages disabled"}
    src_addr = _huge_aligned(ctx, 2)
    sc.madvise(src_addr, 2 * HUGE_PAGE_SIZE, sc.MADV_HUGEPAGE)
    src = Region(src_addr, 2 * HUGE_PAGE_SIZE, MemoryKind.ANON, page_size=PAGE_SIZE)
    src.fill_indexed(SEED)
    dst_addr = _huge_aligned(ctx, 1)
    dst = Region(dst_addr, HUGE_PAGE_SIZE, MemoryKind.ANON, page_size=PAGE_SIZE)
    uffd.register(dst)
    expected_page = src.read(5 * PAGE_SIZE, PAGE_SIZE)
    huge = sum(vma.counters.anon_huge_pages for vma in read_smaps_range(src.addr, src.end))
    facts: dict[str, Any] = {"thp_enabled": mode, "src_anon_huge_bytes": huge}
    facts["split_move"] = _attempt(lambda: uffd.move(dst.addr, src.addr + 5 * PAGE_SIZE, PAGE_SIZE))
    facts["split_move_data_ok"] = (
        _pagemap(dst.addr, 1)[0]["present"] and dst.read(0, PAGE_SIZE) == expected_page
    )
    facts["split_neighbours_intact"] = (
        src.find_indexed_mismatch(SEED, 0, 5) is None
        and src.find_indexed_mismatch(SEED, 6, HUGE_PAGE_SIZE // PAGE_SIZE - 6) is None
    )
    whole_dst = _huge_aligned(ctx, 1)
    whole = Region(whole_dst, HUGE_PAGE_SIZE, MemoryKind.ANON, page_size=PAGE_SIZE)
    uffd.register(whole)
    second = src.addr + HUGE_PAGE_SIZE
    facts["pmd_move"] = _attempt(lambda: uffd.move(whole.addr, second, HUGE_PAGE_SIZE))
    pages = HUGE_PAGE_SIZE // PAGE_SIZE
    facts["pmd_move_data_ok"] = all(
        e["present"] for e in _pagemap(whole.addr, pages)
    ) and _holds_indexed(whole.addr, pages, pages)
    facts["pmd_move_src_unmapped"] = not any(e["present"] for e in _pagemap(second, pages))
    facts["pmd_move_dst_anon_huge_bytes"] = sum(
        vma.counters.anon_huge_pages for vma in read_smaps_range(whole.addr, whole.end)
    )
    return facts


def _holds_indexed(addr: int, pages: int, first_index: int) -> bool:
    """The ``pages`` pages at ``addr`` hold fill_indexed(SEED) content of pages
    ``first_index``... (checked in C, without the GIL)."""
    at = lib.uh_find_indexed_mismatch(
        ffi.cast("char *", addr), pages * PAGE_SIZE, PAGE_SIZE, SEED, first_index
    )
    return at < 0


@scenario(
    id="move",
    title="UFFDIO_MOVE",
    checks="UFFDIO_MOVE (6.8) remaps anonymous pages into a registered range: a bulk move "
    "keeps the data and frames and leaves the source empty, a missing fault can be "
    "resolved by a move, a populated dst gives EEXIST, a source hole ENOENT unless "
    "ALLOW_SRC_HOLES, a populated page part way stops the move with EAGAIN and the count",
    memory=("anon",),
    features=Feature.MOVE,
    min_kernel="6.8",
)
def move(ctx: Context) -> Observation:
    uffd = ctx.uffd(Feature.MOVE)
    dst = ctx.region(2 * PAGES + 4)
    allowed = uffd.register(dst, mode=RegisterMode.MISSING)
    facts: dict[str, Any] = {"move_ioctl_offered": bool(allowed & Ioctl.MOVE)}
    facts["bulk"] = _bulk(ctx, uffd, dst)
    facts["fault_driven"] = _fault_driven(ctx, uffd, dst, PAGES + 1)
    facts["errors"] = _errors(ctx, uffd, dst)
    facts["thp"] = _thp(ctx, uffd)
    problems = _judge(facts)
    bulk, errors = facts["bulk"], facts["errors"]
    key = (
        f"bulk={bulk['result']} data={'ok' if bulk['dst_data_intact'] else 'BAD'}; "
        f"onto populated={errors['onto_populated_dst']['result']}, "
        f"src hole={errors['from_src_hole']['result']}, "
        f"holes allowed={errors['allow_src_holes']['result']}"
    )
    return Observation(facts, not problems, key, "; ".join(problems))


def _judge(facts: dict[str, Any]) -> list[str]:
    page = PAGE_SIZE
    expected = {
        ("bulk", "result"): "ok",
        ("bulk", "bytes"): PAGES * page,
        ("bulk", "dst_data_intact"): True,
        ("bulk", "dst_present"): True,
        ("bulk", "src_unmapped"): True,
        ("bulk", "src_reads_zero"): True,
        ("fault_driven", "fault"): "missing",
        ("fault_driven", "fault_page"): PAGES + 1,
        ("fault_driven", "result"): "ok",
        ("fault_driven", "toucher_finished"): True,
        ("fault_driven", "toucher_read"): "moved-on-fault..",
        ("errors", "src_kept_after_eexist"): True,
        ("errors", "dst_still_empty_after_enoent"): True,
        ("errors", "allow_src_holes_dst_present"): [True, False, True, False],
    }
    problems = [
        f"{a}.{b}={facts[a][b]!r} (expected {want!r})"
        for (a, b), want in expected.items()
        if facts[a][b] != want
    ]
    if facts["bulk"]["pfns_moved_not_copied"] is False:
        problems.append("bulk: dst frames differ from the source frames (copied, not moved)")
    errors = facts["errors"]
    for name, want in (
        ("onto_populated_dst", {"result": "EEXIST", "bytes": 0}),
        ("from_src_hole", {"result": "ENOENT", "bytes": 0}),
        ("allow_src_holes", {"result": "ok", "bytes": 4 * page}),
        ("stops_at_populated_dst", {"result": "EAGAIN", "bytes": page}),
    ):
        if errors[name] != want:
            problems.append(f"{name}: {errors[name]} (expected {want})")
    thp = facts["thp"]
    if "skipped" not in thp:
        for name in ("split_move", "pmd_move"):
            if thp[name]["result"] != "ok":
                problems.append(f"thp {name}: {thp[name]}")
        for name in (
            "split_move_data_ok",
            "split_neighbours_intact",
            "pmd_move_data_ok",
            "pmd_move_src_unmapped",
        ):
            if not thp[name]:
                problems.append(f"thp {name} false")
    if problems:
        problems.append(json.dumps(facts))
    return problems
