"""mremap moving memory away and back (no userfaultfd involved)."""

from __future__ import annotations

from .. import syscalls as sc
from ..maps import read_maps_range
from .context import Context
from .model import ALL_KINDS, Observation, Skip
from .registry import scenario

BUFFER_BYTES = 32 * 1024 * 1024


@scenario(
    id="mremap-roundtrip",
    title="mremap half of a 32 MiB buffer away and back",
    checks="moving the second half of a populated 32 MiB buffer elsewhere and back with "
    "mremap keeps every page's data (anon_vma ordering fixes, 3.x era) and restores the "
    "VMA layout",
    memory=ALL_KINDS,
    hugepages=16,
)
def mremap_roundtrip(ctx: Context) -> Observation:
    if ctx.memory.is_hugetlb and ctx.kernel < (5, 16):
        # "mm, hugepages: add mremap() support for hugepage backed vma" (5.16).
        raise Skip(f"mremap of hugetlb VMAs needs kernel >= 5.16, running {ctx.kernel}")
    pages = BUFFER_BYTES // ctx.page_size
    region = ctx.region(pages)
    region.fill_indexed(seed=0x32)
    half = BUFFER_BYTES // 2
    vmas_before = len(read_maps_range(region.addr, region.end))
    # Park in PROT_NONE address space aligned to the page size (hugetlb needs 2 MiB).
    parking_length = half + 2 * ctx.page_size
    flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_NORESERVE
    parking = sc.mmap(0, parking_length, sc.PROT_NONE, flags)
    away = (parking + ctx.page_size - 1) & ~(ctx.page_size - 1)
    home = region.addr + half
    sc.mremap(home, half, half, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, away)
    vmas_while_away = len(read_maps_range(region.addr, region.end))
    sc.mremap(away, half, half, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, home)
    vmas_after = len(read_maps_range(region.addr, region.end))
    mismatch = region.find_indexed_mismatch(seed=0x32)
    sc.munmap(parking, parking_length)
    facts = {
        "bytes": BUFFER_BYTES,
        "vmas_before": vmas_before,
        "vmas_while_away": vmas_while_away,
        "vmas_after": vmas_after,
        "first_mismatch_offset": mismatch,
    }
    expected_after = 2 if ctx.memory.is_hugetlb else vmas_before  # hugetlb never merges
    ok = mismatch is None and vmas_after == expected_after
    reason = "" if ok else f"mismatch at {mismatch}, VMAs {vmas_before} -> {vmas_after}"
    return Observation(
        facts,
        ok,
        f"data={'ok' if mismatch is None else 'BAD'} vmas={vmas_before}->{vmas_after}",
        reason,
    )
