"""Register/unregister and VMA merging: the unregister-merge family of bugs."""

from __future__ import annotations

from ..maps import layout, read_smaps_range
from ..system import kernel_warned
from .context import Context
from .model import ALL_KINDS, KnownBug, Observation
from .registry import scenario

UFFD_MERGE_FIX = KnownBug(
    fixed_in="6.4",
    fix="mm/uffd: allow vma to merge as much as possible",
    signature="a range whose start lies inside a VMA is split off but never merged with "
    "its compatible neighbour: 3 VMAs where 2 are expected",
)

# hugetlb VMAs never merge on any kernel: hugetlb_vm_ops has a .close handler and
# is_mergeable_vma() refuses VMAs with vm_ops->close. Splits are all a hugetlb
# scenario can expect, so its expected layout keeps every piece.
HUGETLB_NEVER_MERGES = "hugetlb VMAs never merge (hugetlb_vm_ops has .close)"

PAGES = 20


def _layout(ctx: Context, region) -> list[tuple[int, int, list[str]]]:
    vmas = read_smaps_range(region.addr, region.end)
    pieces = layout(vmas, region.addr, region.length, page_size=ctx.page_size)
    return [(start, end, sorted(flags)) for start, end, flags in pieces]


def _compare(ctx, facts, observed, expected, buggy_layout, key_name) -> Observation:
    if ctx.memory.is_hugetlb:
        expected = expected["hugetlb"]
        facts["note"] = HUGETLB_NEVER_MERGES
    else:
        expected = expected["merging"]
    facts["expected_layout"] = expected
    ok = observed == expected
    count = len(observed)
    return Observation(
        facts,
        ok=ok,
        key=f"{key_name}={count} (expected {len(expected)})",
        reason="" if ok else f"layout {observed}, expected {expected}",
        buggy=not ok and buggy_layout is not None and observed == buggy_layout,
    )


def _page_range(ctx: Context, region, first: int, count: int) -> tuple[int, int]:
    return region.addr + first * ctx.page_size, count * ctx.page_size


@scenario(
    id="unregister-merge",
    title="Unregister the tail of a registered VMA next to a plain VMA",
    checks="mmap 20 pages, register 0-9, unregister 5-9: pages 5-19 must merge back into "
    "one VMA (fixed by 'mm/uffd: allow vma to merge as much as possible', 6.4)",
    memory=ALL_KINDS,
    hugepages=PAGES,
    known_bug=UFFD_MERGE_FIX,
)
def unregister_merge(ctx: Context) -> Observation:
    region = ctx.region(PAGES)
    uffd = ctx.uffd(ctx.mode_features("missing"))
    uffd.register(*_page_range(ctx, region, 0, 10))
    after_register = _layout(ctx, region)
    uffd.unregister(*_page_range(ctx, region, 5, 5))
    after_unregister = _layout(ctx, region)
    facts = {
        "vmas_after_register": len(after_register),
        "vmas_after_unregister": len(after_unregister),
        "layout_after_register": after_register,
        "layout_after_unregister": after_unregister,
    }
    expected = {
        "merging": [(0, 5, ["um"]), (5, 20, [])],
        "hugetlb": [(0, 5, ["um"]), (5, 10, []), (10, 20, [])],
    }
    buggy = [(0, 5, ["um"]), (5, 10, []), (10, 20, [])]
    return _compare(ctx, facts, after_unregister, expected, buggy, "vmas_after_unregister")


@scenario(
    id="register-merge",
    title="Register a range next to a registered VMA",
    checks="mmap 20 pages, register 10-19, then 5-9: pages 5-19 must form one registered "
    "VMA (same 'allow vma to merge as much as possible' series, 6.4)",
    memory=ALL_KINDS,
    hugepages=PAGES,
    known_bug=UFFD_MERGE_FIX,
)
def register_merge(ctx: Context) -> Observation:
    region = ctx.region(PAGES)
    uffd = ctx.uffd(ctx.mode_features("missing"))
    uffd.register(*_page_range(ctx, region, 10, 10))
    first = _layout(ctx, region)
    uffd.register(*_page_range(ctx, region, 5, 5))
    second = _layout(ctx, region)
    facts = {
        "vmas_after_first_register": len(first),
        "vmas_after_second_register": len(second),
        "layout_after_second_register": second,
    }
    expected = {
        "merging": [(0, 5, []), (5, 20, ["um"])],
        "hugetlb": [(0, 5, []), (5, 10, ["um"]), (10, 20, ["um"])],
    }
    buggy = [(0, 5, []), (5, 10, ["um"]), (10, 20, ["um"])]
    return _compare(ctx, facts, second, expected, buggy, "vmas_after_second_register")


@scenario(
    id="unregister-middle",
    title="Unregister the middle of a registered VMA, then register it again",
    checks="register 20 pages, unregister 5-14 (3 VMAs), re-register 5-14: the pieces "
    "must merge back into one registered VMA",
    memory=ALL_KINDS,
    hugepages=PAGES,
    known_bug=UFFD_MERGE_FIX,
)
def unregister_middle(ctx: Context) -> Observation:
    region = ctx.region(PAGES)
    uffd = ctx.uffd(ctx.mode_features("missing"))
    uffd.register(region)
    uffd.unregister(*_page_range(ctx, region, 5, 10))
    split = _layout(ctx, region)
    uffd.register(*_page_range(ctx, region, 5, 10))
    rejoined = _layout(ctx, region)
    facts = {
        "vmas_after_unregister": len(split),
        "vmas_after_reregister": len(rejoined),
        "layout_after_unregister": split,
        "layout_after_reregister": rejoined,
    }
    expected = {
        "merging": [(0, 20, ["um"])],
        "hugetlb": [(0, 5, ["um"]), (5, 15, ["um"]), (15, 20, ["um"])],
    }
    observation = _compare(ctx, facts, rejoined, expected, None, "vmas_after_reregister")
    expected_split = [(0, 5, ["um"]), (5, 15, []), (15, 20, ["um"])]
    if not ctx.memory.is_hugetlb and split != expected_split:
        observation.ok = False
        observation.reason = f"after unregister: {split}, expected {expected_split}"
    observation.buggy = not observation.ok and len(rejoined) > 1
    return observation


@scenario(
    id="register-cuts-vma",
    title="Register and unregister a range that starts inside a VMA",
    checks="register then unregister pages 5-14 of a 20-page VMA: the VMA must be cut in "
    "three and merged back whole, without a kernel WARN ('start addr cuts part of vma', "
    "vma_merge called with a wrong prev, fixed in 6.4)",
    memory=ALL_KINDS,
    hugepages=PAGES,
    known_bug=UFFD_MERGE_FIX,
)
def register_cuts_vma(ctx: Context) -> Observation:
    region = ctx.region(PAGES)
    uffd = ctx.uffd(ctx.mode_features("missing"))
    warned_before = kernel_warned()
    uffd.register(*_page_range(ctx, region, 5, 10))
    registered = _layout(ctx, region)
    uffd.unregister(*_page_range(ctx, region, 5, 10))
    unregistered = _layout(ctx, region)
    warned_now = kernel_warned() and not warned_before
    facts = {
        "layout_after_register": registered,
        "layout_after_unregister": unregistered,
        "vmas_after_unregister": len(unregistered),
        "kernel_warned": warned_now,
        "taint_warn_already_set": warned_before,
    }
    expected = {
        "merging": [(0, 20, [])],
        "hugetlb": [(0, 5, []), (5, 15, []), (15, 20, [])],
    }
    observation = _compare(ctx, facts, unregistered, expected, None, "vmas_after_unregister")
    if registered != [(0, 5, []), (5, 15, ["um"]), (15, 20, [])]:
        observation.ok = False
        observation.reason = f"after register: {registered}"
    if warned_now:
        observation.ok = False
        observation.reason = "the kernel printed a WARN (TAINT_WARN set) during register"
    observation.buggy = not observation.ok
    return observation
