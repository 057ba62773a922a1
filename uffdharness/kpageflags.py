"""/proc/kpageflags: the flags of each physical page frame, here to tell which folio a
mapped page belongs to (PFNs from /proc/self/pagemap, both root-only: without
CAP_SYS_ADMIN pagemap reports PFN 0 and kpageflags is unreadable).

Bits (include/uapi/linux/kernel-page-flags.h): COMPOUND_HEAD 15 and COMPOUND_TAIL 16 mark
the pages of a large folio (hugetlb and THP alike), THP 22 a transparent one.
"""

from __future__ import annotations

import os

from .pagemap import PAGEMAP_PAGE, PFN_MASK, Pagemap, PagemapFlag

KPAGEFLAGS = "/proc/kpageflags"
KPF_COMPOUND_HEAD = 1 << 15
KPF_COMPOUND_TAIL = 1 << 16
KPF_THP = 1 << 22
_PRESENT = int(PagemapFlag.PRESENT)


def readable() -> bool:
    return os.access(KPAGEFLAGS, os.R_OK)


def frame_flags(pfns: list[int]) -> list[int]:
    """The flags of each frame, read with one pread per run of consecutive PFNs (a THP's
    512 frames are one read)."""
    flags: list[int] = []
    fd = os.open(KPAGEFLAGS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        start = 0
        while start < len(pfns):
            end = start + 1
            while end < len(pfns) and pfns[end] == pfns[end - 1] + 1:
                end += 1
            data = os.pread(fd, 8 * (end - start), pfns[start] * 8)
            if len(data) != 8 * (end - start):
                raise OSError(f"short read of {KPAGEFLAGS} at PFN {pfns[start]:#x}")
            flags.extend(int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8))
            start = end
    finally:
        os.close(fd)
    return flags


def folio_sizes(addr: int, length: int) -> list[int]:
    """Sizes in bytes of the folios mapping [addr, addr + length), in address order: a run
    of physically contiguous frames starting at a COMPOUND_HEAD and continuing in TAILs
    counts as one folio; a small page is one PAGEMAP_PAGE; an unmapped page counts 0."""
    with Pagemap() as pagemap:
        entries = pagemap.raw(addr, length)
    pfns = [entry & PFN_MASK if entry & _PRESENT else 0 for entry in entries]
    mapped = [pfn for pfn in pfns if pfn]
    by_pfn = dict(zip(mapped, frame_flags(mapped), strict=True))
    sizes: list[int] = []
    previous = -2
    for pfn in pfns:
        bits = by_pfn.get(pfn, 0) if pfn else 0
        if not pfn:
            sizes.append(0)
        elif bits & KPF_COMPOUND_TAIL and pfn == previous + 1 and sizes and sizes[-1]:
            sizes[-1] += PAGEMAP_PAGE
        else:
            sizes.append(PAGEMAP_PAGE)
        previous = pfn
    return sizes
