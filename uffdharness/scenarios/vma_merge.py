"""Register/unregister and VMA merging: the unregister-merge family of bugs."""

from __future__ import annotations

from ..abi import RegisterMode
from ..maps import layout, read_smaps_range
from ..memory import HUGETLB_NEVER_MERGES, Region
from ..system import kernel_warned
from .checks import Checks
from .context import Context
from .model import ALL_KINDS, SMALL_PAGE_KINDS, AtLeast, KnownBug, Observation
from .registry import scenario

Layout = list[tuple[int, int, list[str]]]

# Before 6.4 userfaultfd_register()/userfaultfd_unregister() called vma_merge() with the
# VMA before the range as prev even when the range started inside a VMA, so the piece
# split off there never merged back. Only VMAs that can merge show it: hugetlb VMAs never
# do (HUGETLB_NEVER_MERGES), so their extra pieces are expected, not this bug.
UFFD_MERGE_FIX = KnownBug(
    fixed_in="6.4",
    fix="mm/uffd: allow vma to merge as much as possible",
    signature="a range whose start lies inside a VMA is split off but never merged with "
    "its compatible neighbour: 3 VMAs where 2 are expected",
    memory=SMALL_PAGE_KINDS,
)

PAGES = 20


def _layout(ctx: Context, region: Region) -> Layout:
    vmas = read_smaps_range(region.addr, region.end)
    pieces = layout(vmas, region.addr, region.length, page_size=ctx.page_size)
    return [(start, end, sorted(flags)) for start, end, flags in pieces]


def _expect_layout(check: Checks, stage: str, observed: Layout, expected: Layout) -> bool:
    """Record ``vmas_<stage>`` and ``layout_<stage>``; a problem names the VMA count when
    that differs, else the layout (same count, other flags or boundaries)."""
    if not check.expect(f"vmas_{stage}", len(observed), len(expected)):
        check.fact(f"layout_{stage}", observed)
        return False
    return check.expect(f"layout_{stage}", observed, expected)


def _final(
    ctx: Context, check: Checks, stage: str, observed: Layout, merging: Layout, hugetlb: Layout
) -> Observation:
    """Judge the layout the scenario ends with: ``merging`` where VMAs merge, ``hugetlb``
    (every cut kept) on hugetlb."""
    expected = hugetlb if ctx.spec.is_hugetlb else merging
    if ctx.spec.is_hugetlb:
        check.fact("note", HUGETLB_NEVER_MERGES)
    check.fact("expected_layout", expected)
    _expect_layout(check, stage, observed, expected)
    return check.observation(key=f"vmas_{stage}={len(observed)} (expected {len(expected)})")


def _page_range(ctx: Context, region: Region, first: int, count: int) -> tuple[int, int]:
    return region.addr + first * ctx.page_size, count * ctx.page_size


@scenario(
    id="unregister-merge",
    title="Unregister the tail of a registered VMA next to a plain VMA",
    checks="mmap 20 pages, register 0-9, unregister 5-9: pages 5-19 must merge back into "
    "one VMA (fixed by 'mm/uffd: allow vma to merge as much as possible', 6.4)",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    hugepages=PAGES,
    known_bug=UFFD_MERGE_FIX.showing(vmas_after_unregister=3),
)
def unregister_merge(ctx: Context) -> Observation:
    region = ctx.region(PAGES)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING))
    uffd.register(*_page_range(ctx, region, 0, 10))
    after_register = _layout(ctx, region)
    uffd.unregister(*_page_range(ctx, region, 5, 5))
    after_unregister = _layout(ctx, region)
    check = Checks()
    check.fact("vmas_after_register", len(after_register))
    check.fact("layout_after_register", after_register)
    return _final(
        ctx,
        check,
        "after_unregister",
        after_unregister,
        merging=[(0, 5, ["um"]), (5, 20, [])],
        hugetlb=[(0, 5, ["um"]), (5, 10, []), (10, 20, [])],
    )


@scenario(
    id="register-merge",
    title="Register a range next to a registered VMA",
    checks="mmap 20 pages, register 10-19, then 5-9: pages 5-19 must form one registered "
    "VMA (same 'allow vma to merge as much as possible' series, 6.4)",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    hugepages=PAGES,
    known_bug=UFFD_MERGE_FIX.showing(vmas_after_second_register=3),
)
def register_merge(ctx: Context) -> Observation:
    region = ctx.region(PAGES)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING))
    uffd.register(*_page_range(ctx, region, 10, 10))
    first = _layout(ctx, region)
    uffd.register(*_page_range(ctx, region, 5, 5))
    second = _layout(ctx, region)
    check = Checks()
    check.fact("vmas_after_first_register", len(first))
    return _final(
        ctx,
        check,
        "after_second_register",
        second,
        merging=[(0, 5, []), (5, 20, ["um"])],
        hugetlb=[(0, 5, []), (5, 10, ["um"]), (10, 20, ["um"])],
    )


@scenario(
    id="unregister-middle",
    title="Unregister the middle of a registered VMA, then register it again",
    checks="register 20 pages, unregister 5-14 (3 VMAs), re-register 5-14: the pieces "
    "must merge back into one registered VMA",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    hugepages=PAGES,
    known_bug=UFFD_MERGE_FIX.showing(vmas_after_reregister=AtLeast(2)),
)
def unregister_middle(ctx: Context) -> Observation:
    region = ctx.region(PAGES)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING))
    uffd.register(region)
    uffd.unregister(*_page_range(ctx, region, 5, 10))
    split = _layout(ctx, region)
    uffd.register(*_page_range(ctx, region, 5, 10))
    rejoined = _layout(ctx, region)
    check = Checks()
    # Unregistering the middle cuts every kind, hugetlb included, in three.
    _expect_layout(
        check, "after_unregister", split, [(0, 5, ["um"]), (5, 15, []), (15, 20, ["um"])]
    )
    return _final(
        ctx,
        check,
        "after_reregister",
        rejoined,
        merging=[(0, 20, ["um"])],
        hugetlb=[(0, 5, ["um"]), (5, 15, ["um"]), (15, 20, ["um"])],
    )


@scenario(
    id="register-cuts-vma",
    title="Register and unregister a range that starts inside a VMA",
    checks="register then unregister pages 5-14 of a 20-page VMA: the VMA must be cut in "
    "three and merged back whole, without a kernel WARN ('start addr cuts part of vma', "
    "vma_merge called with a wrong prev, fixed in 6.4)",
    memory=ALL_KINDS,
    modes=RegisterMode.MISSING,
    hugepages=PAGES,
    # The bug is the VMA left in three pieces; a WARN alone is some other defect.
    known_bug=UFFD_MERGE_FIX.showing(vmas_after_unregister=3),
)
def register_cuts_vma(ctx: Context) -> Observation:
    region = ctx.region(PAGES)
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.MISSING))
    warned_before = kernel_warned()
    uffd.register(*_page_range(ctx, region, 5, 10))
    registered = _layout(ctx, region)
    uffd.unregister(*_page_range(ctx, region, 5, 10))
    unregistered = _layout(ctx, region)
    warned_now = kernel_warned() and not warned_before
    check = Checks()
    _expect_layout(check, "after_register", registered, [(0, 5, []), (5, 15, ["um"]), (15, 20, [])])
    # TAINT_WARN is sticky: a WARN before the scenario hides one during it.
    check.fact("taint_warn_already_set", warned_before)
    check.expect("kernel_warned", warned_now, False)
    return _final(
        ctx,
        check,
        "after_unregister",
        unregistered,
        merging=[(0, 20, [])],
        hugetlb=[(0, 5, []), (5, 15, []), (15, 20, [])],
    )
