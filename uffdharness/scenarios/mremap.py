"""mremap moving memory away and back (no userfaultfd involved)."""

from __future__ import annotations

from .. import syscalls as sc
from ..maps import read_maps_range
from ..memory import Reservation
from .checks import Checks
from .context import Context
from .model import ALL_KINDS, Observation
from .registry import scenario

BUFFER_BYTES = 32 * 1024 * 1024


@scenario(
    id="mremap-roundtrip",
    title="mremap half of a 32 MiB buffer away and back",
    checks="moving the second half of a populated 32 MiB buffer elsewhere and back with "
    "mremap keeps every page's data (anon_vma ordering fixes, 3.x era) and restores the "
    "VMA layout",
    memory=ALL_KINDS,
    uses=("mremap",),
    hugepages=16,
)
def mremap_roundtrip(ctx: Context) -> Observation:
    pages = BUFFER_BYTES // ctx.page_size
    region = ctx.region(pages)
    region.fill_indexed(seed=0x32)
    half = BUFFER_BYTES // 2
    check = Checks({"bytes": BUFFER_BYTES})
    vmas_before = check.fact("vmas_before", len(read_maps_range(region.addr, region.end)))
    home = region.addr + half
    # Park in PROT_NONE address space aligned to the page size: a hugetlb VMA must start
    # on a huge page boundary (mremap gives EINVAL otherwise).
    with Reservation(half, align=ctx.page_size) as parking:
        sc.mremap(home, half, half, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, parking.start)
        check.fact("vmas_while_away", len(read_maps_range(region.addr, region.end)))
        sc.mremap(parking.start, half, half, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, home)
    vmas_after = len(read_maps_range(region.addr, region.end))
    mismatch = region.find_indexed_mismatch(seed=0x32)
    check.expect("first_mismatch_offset", mismatch, None)
    # The half moved back is a VMA of its own; hugetlb VMAs never merge (hugetlb_vm_ops
    # has .close), every other kind merges back into one.
    check.expect("vmas_after", vmas_after, 2 if ctx.spec.is_hugetlb else vmas_before)
    data = "ok" if mismatch is None else "BAD"
    return check.observation(key=f"data={data} vmas={vmas_before}->{vmas_after}")
