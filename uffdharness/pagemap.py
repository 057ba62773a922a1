"""/proc/PID/pagemap: per-page flags (read(2)) and the PAGEMAP_SCAN ioctl (6.7).

Reading pagemap walks page tables only, so it never faults on registered memory and is
safe with the GIL held. Each entry is 64 bits per *base* page (4 KiB on x86_64, also
inside a 2 MiB hugetlb page), layout from Documentation/admin-guide/mm/pagemap.rst:

    bit 63 present, 62 swapped (or another swap-format entry), 61 file page or
    shared-anon, 58 guard region (6.15), 57 uffd-wp (PM_UFFD_WP, 5.19 for PTE markers),
    56 exclusively mapped (4.2), 55 soft-dirty, 0-54 PFN (zero without CAP_SYS_ADMIN).

An fd of /proc/self/pagemap names the process that opened it: open it after fork().
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from enum import IntFlag

from ._native import ffi, lib
from .abi import Feature, IoctlRequest, PageCategory, RegisterMode, ScanFlag, flag_names
from .errors import UffdError
from .memory import Region, allocate
from .owned_fd import OwnedFd
from .uffd import Userfaultfd

ENTRY_BYTES = 8
PAGEMAP_PAGE = os.sysconf("SC_PAGE_SIZE")  # pagemap has one entry per base page
PFN_MASK = (1 << 55) - 1


class PagemapFlag(IntFlag):
    """The flag bits of one pagemap entry."""

    SOFT_DIRTY = 1 << 55
    EXCLUSIVE = 1 << 56
    UFFD_WP = 1 << 57
    GUARD = 1 << 58
    FILE_SHARED = 1 << 61
    SWAPPED = 1 << 62
    PRESENT = 1 << 63


_FLAG_BITS = 0
for _flag in PagemapFlag:
    _FLAG_BITS |= _flag.value


@dataclass(frozen=True, slots=True)
class PagemapEntry:
    """One page's pagemap entry: its address and the raw 64-bit value."""

    address: int
    raw: int

    @property
    def flags(self) -> PagemapFlag:
        return PagemapFlag(self.raw & _FLAG_BITS)

    @property
    def present(self) -> bool:
        return bool(self.raw & PagemapFlag.PRESENT)

    @property
    def swapped(self) -> bool:
        return bool(self.raw & PagemapFlag.SWAPPED)

    @property
    def file_shared(self) -> bool:
        return bool(self.raw & PagemapFlag.FILE_SHARED)

    @property
    def uffd_wp(self) -> bool:
        return bool(self.raw & PagemapFlag.UFFD_WP)

    @property
    def exclusive(self) -> bool:
        return bool(self.raw & PagemapFlag.EXCLUSIVE)

    @property
    def soft_dirty(self) -> bool:
        return bool(self.raw & PagemapFlag.SOFT_DIRTY)

    @property
    def pfn(self) -> int:
        """Page frame number of a present page (0 unless CAP_SYS_ADMIN); for a swapped
        entry these bits hold the swap type and offset instead."""
        return self.raw & PFN_MASK

    def names(self) -> list[str]:
        return flag_names(self.flags)


@dataclass(frozen=True, slots=True)
class PageRegion:
    """One uh_page_region from PAGEMAP_SCAN: [start, end) sharing ``categories``."""

    start: int
    end: int
    categories: PageCategory

    @property
    def length(self) -> int:
        return self.end - self.start

    def pages(self, page_size: int = PAGEMAP_PAGE) -> int:
        return self.length // page_size


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What PAGEMAP_SCAN returned. ``walk_end`` is where the walk stopped: the requested
    end when it finished, earlier when the region vector or ``max_pages`` ran out."""

    regions: tuple[PageRegion, ...]
    walk_end: int
    start: int
    end: int

    @property
    def complete(self) -> bool:
        return self.walk_end == self.end

    def pages(self, page_size: int = PAGEMAP_PAGE) -> int:
        return sum(region.pages(page_size) for region in self.regions)

    def page_addresses(self, page_size: int = PAGEMAP_PAGE) -> list[int]:
        return [
            address
            for region in self.regions
            for address in range(region.start, region.end, page_size)
        ]


# The categories of PAGEMAP_SCAN as 6.7 introduced them. Newer ones (GUARD, ACCESSED
# 7.3) are asked for by name: do_pagemap_scan() refuses with EINVAL any mask bit outside
# the running kernel's PM_SCAN_CATEGORIES, so a default must hold only the 6.7 set.
ALL_CATEGORIES = PageCategory(0)
for _category in PageCategory:
    if _category.value <= PageCategory.SOFT_DIRTY:
        ALL_CATEGORIES |= _category


class Pagemap(OwnedFd):
    """An open /proc/PID/pagemap; owns the fd and closes it once."""

    _what = "pagemap"

    def __init__(self, pid: int | str = "self") -> None:
        self.path = f"/proc/{pid}/pagemap"
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    # --- read(2) -------------------------------------------------------------------------------

    def raw(self, addr: int, length: int) -> list[int]:
        """Raw 64-bit entries of every base page in [addr, addr + length)."""
        if addr % PAGEMAP_PAGE or length % PAGEMAP_PAGE or length < 0:
            raise ValueError(f"[{addr:#x}+{length:#x}] is not aligned to {PAGEMAP_PAGE}")
        count = length // PAGEMAP_PAGE
        offset = addr // PAGEMAP_PAGE * ENTRY_BYTES
        want = count * ENTRY_BYTES
        data = b""
        while len(data) < want:
            try:
                chunk = os.pread(self.fileno(), want - len(data), offset + len(data))
            except OSError as exc:
                raise UffdError(exc.errno, "read(pagemap)", addr, length) from None
            if not chunk:
                break
            data += chunk
        if len(data) != want:
            raise UffdError(errno.EIO, "read(pagemap)", addr, length, detail="short read")
        return [int.from_bytes(data[i : i + 8], "little") for i in range(0, want, ENTRY_BYTES)]

    def entries(self, addr: int, length: int, page_size: int = PAGEMAP_PAGE) -> list[PagemapEntry]:
        """One entry per ``page_size`` page: its first base page's entry (a 2 MiB hugetlb
        page reports the same flags in each of its 512 base entries)."""
        if page_size % PAGEMAP_PAGE:
            raise ValueError(f"page size {page_size} is not a multiple of {PAGEMAP_PAGE}")
        if page_size == PAGEMAP_PAGE:
            values = self.raw(addr, length)
            return [PagemapEntry(addr + i * page_size, v) for i, v in enumerate(values)]
        return [
            PagemapEntry(page, self.raw(page, PAGEMAP_PAGE)[0])
            for page in range(addr, addr + length, page_size)
        ]

    def flag_mask(
        self, flag: PagemapFlag, addr: int, length: int, page_size: int = PAGEMAP_PAGE
    ) -> int:
        """Bit i set when page i of the range has ``flag``."""
        mask = 0
        for index, entry in enumerate(self.entries(addr, length, page_size)):
            if entry.raw & flag:
                mask |= 1 << index
        return mask

    # --- PAGEMAP_SCAN ----------------------------------------------------------------------------

    def scan(
        self,
        start: int,
        end: int,
        *,
        flags: ScanFlag = ScanFlag(0),
        category_mask: PageCategory = PageCategory(0),
        category_inverted: PageCategory = PageCategory(0),
        category_anyof_mask: PageCategory = PageCategory(0),
        return_mask: PageCategory = ALL_CATEGORIES,
        max_pages: int = 0,
        max_regions: int = 256,
    ) -> ScanResult:
        """PAGEMAP_SCAN over [start, end) (6.7).

        A page is reported when ``(categories ^ category_inverted) & category_mask`` equals
        ``category_mask`` and, if ``category_anyof_mask`` is set, shares a bit with it;
        ``return_mask`` picks the categories reported. With ``ScanFlag.WP_MATCHING`` the
        matching pages are write-protected again (uffd-wp async tracking, WP_ASYNC);
        ``CHECK_WPASYNC`` makes the kernel refuse (EPERM) VMAs not registered with it.
        """
        vec = ffi.new("struct uh_page_region[]", max_regions)
        arg = ffi.new(
            "struct uh_pm_scan_arg *",
            {
                "size": ffi.sizeof("struct uh_pm_scan_arg"),
                "flags": int(flags),
                "start": start,
                "end": end,
                "vec": int(ffi.cast("uintptr_t", vec)),
                "vec_len": max_regions,
                "max_pages": max_pages,
                "category_inverted": int(category_inverted),
                "category_mask": int(category_mask),
                "category_anyof_mask": int(category_anyof_mask),
                "return_mask": int(return_mask),
            },
        )
        rc = lib.uh_ioctl(self.fileno(), IoctlRequest.PAGEMAP_SCAN, arg)
        if rc < 0:
            raise UffdError(-rc, "PAGEMAP_SCAN", start, end - start, detail=_scan_hint(-rc))
        # The ioctl's return value (regions filled) is folded into 0 by uh_ioctl; a filled
        # region always has end > start, and the vector started zeroed.
        regions = []
        for index in range(max_regions):
            entry = vec[index]
            if entry.end == 0:
                break
            regions.append(PageRegion(entry.start, entry.end, PageCategory(entry.categories)))
        return ScanResult(tuple(regions), arg.walk_end, start, end)


def _scan_hint(code: int) -> str:
    if code == errno.ENOTTY:
        return "this kernel has no PAGEMAP_SCAN ioctl (added in Linux 6.7)"
    if code == errno.EINVAL:
        return (
            "arguments refused: unaligned range, an empty return_mask, or flags/categories "
            "this kernel does not know (PAGEMAP_SCAN is 6.7+, PAGE_IS_ACCESSED 7.3)"
        )
    if code == errno.EPERM:
        return "CHECK_WPASYNC: part of the range is not registered with UFFD_FEATURE_WP_ASYNC"
    return ""


def read_entries(addr: int, length: int, page_size: int = PAGEMAP_PAGE) -> list[PagemapEntry]:
    """This process's pagemap entries, one per ``page_size`` page of the range."""
    with Pagemap() as pagemap:
        return pagemap.entries(addr, length, page_size)


def uffd_wp_mask(addr: int, length: int, page_size: int = PAGEMAP_PAGE) -> int:
    """Bit i set when page i of the range carries the uffd-wp bit (pagemap bit 57)."""
    with Pagemap() as pagemap:
        return pagemap.flag_mask(PagemapFlag.UFFD_WP, addr, length, page_size)


def scan(start: int, end: int, **kwargs) -> ScanResult:
    """PAGEMAP_SCAN on this process; keyword arguments as Pagemap.scan."""
    with Pagemap() as pagemap:
        return pagemap.scan(start, end, **kwargs)


def scan_supported() -> bool:
    """True when the running kernel has PAGEMAP_SCAN (6.7): an empty scan succeeds."""
    try:
        scan(0, 0)
    except UffdError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            return False
        raise
    return True


# --- views of a region -------------------------------------------------------------------------


def region_view(region: Region) -> list[str]:
    """Pagemap flags of each page of ``region``, e.g. "EXCLUSIVE+UFFD_WP+PRESENT"; "" for
    an empty PTE. A uffd-wp PTE marker reads "UFFD_WP+SWAPPED" (a swap-format entry) on
    small pages and plain "UFFD_WP" on hugetlb."""
    with Pagemap() as pagemap:
        entries = pagemap.entries(region.addr, region.length, region.page_size)
    return ["+".join(entry.names()) for entry in entries]


def wp_pages(region: Region) -> list[int]:
    """Indexes of the pages of ``region`` whose pagemap entry carries uffd-wp (bit 57)."""
    with Pagemap() as pagemap:
        mask = pagemap.flag_mask(PagemapFlag.UFFD_WP, region.addr, region.length, region.page_size)
    return [i for i in range(region.pages) if mask >> i & 1]


def probe_uffd_wp_bit(user_mode_only: bool = False) -> bool:
    """Whether pagemap reports uffd-wp ("mm/pagemap: export uffd-wp protection
    information", 5.14): older kernels leave bit 57 clear without any error, so protect
    one anonymous page and look. Use ``system.facts().pagemap_uffd_wp``, which asks once."""
    with allocate("anon", 1) as region:
        region.touch(0, write=True)
        with Userfaultfd.open(Feature.PAGEFAULT_FLAG_WP, user_mode_only=user_mode_only) as uffd:
            uffd.register(region, mode=RegisterMode.WP)
            uffd.writeprotect(region)
            return wp_pages(region) == [0]
