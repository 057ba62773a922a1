"""Facts about transparent huge pages that the THP scenarios share: how much of a range a
PMD maps (smaps AnonHugePages + ShmemPmdMapped), the sizes of the folios mapping it
(/proc/kpageflags, root only), and whether a first touch got its THPs.

A THP kind's first touch falls back to small pages when the kernel cannot allocate a huge
folio (fragmented memory, a memcg limit); /proc/vmstat counts that as thp_fault_fallback
(anonymous) or thp_file_fallback (shmem, 5.8). Only such a counted fallback makes a
scenario skip: a range left small without one is a fact to judge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import kpageflags
from ..maps import read_smaps_range
from ..memory import Region
from .model import Skip

FALLBACK_COUNTER = {"anon": "thp_fault_fallback", "shmem": "thp_file_fallback"}


def pmd_mapped_bytes(addr: int, length: int) -> int:
    """Bytes of [addr, addr + length) mapped by PMDs, summed over the VMAs there."""
    return sum(
        vma.counters.anon_huge_pages + vma.counters.shmem_pmd_mapped
        for vma in read_smaps_range(addr, addr + length)
    )


def folio_runs(addr: int, length: int) -> list[list[int]] | None:
    """The folio sizes mapping the range as runs in address order, [[size, count], ...]
    (an unmapped page is size 0); None where /proc/kpageflags is unreadable (not root)."""
    if not kpageflags.readable():
        return None
    runs: list[list[int]] = []
    for size in kpageflags.folio_sizes(addr, length):
        if runs and runs[-1][0] == size:
            runs[-1][1] += 1
        else:
            runs.append([size, 1])
    return runs


def vmstat(name: str) -> int | None:
    with open("/proc/vmstat") as stats:
        for line in stats:
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    return None


def first_touch_thps(
    region: Region, family: str, touch: Callable[[], None], length: int | None = None
) -> dict[str, Any]:
    """Run ``touch``, the first touch of ``region`` (a THP kind) populating its first
    ``length`` bytes (all by default), and report how much of it PMDs map. Raises Skip when
    less than ``length`` is PMD-mapped and the kernel counted a THP allocation fallback
    meanwhile (another process's fallback counts too: a skip, never a wrong verdict)."""
    length = region.length if length is None else length
    counter = FALLBACK_COUNTER[family]
    before = vmstat(counter)
    touch()
    after = vmstat(counter)
    mapped = pmd_mapped_bytes(region.addr, region.length)
    fallbacks = None if before is None or after is None else after - before
    if mapped < length and fallbacks:
        raise Skip(
            f"no THP could be allocated: {mapped >> 20} of {length >> 20} MiB "
            f"PMD-mapped after the first touch, {counter} +{fallbacks}"
        )
    return {"pmd_mapped_bytes": mapped, "thp_fallbacks": fallbacks}
