"""Memory regions of every kind the harness registers, with GIL-free access helpers.

Every access helper (read, write, touch, fill, verify) is one cffi call, and cffi releases
the GIL for its duration: a thread that faults on registered memory inside it sleeps in the
kernel without blocking a Python handler thread. Never read registered memory through a raw
memoryview: that faults with the GIL held and deadlocks a Python handler thread.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from . import hugepages
from . import syscalls as sc
from ._native import ffi, lib
from .abi import Feature, RegisterMode
from .errors import HarnessError, UffdError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

Family = Literal["anon", "shmem", "hugetlb"]
Backing = Literal["anonymous", "memfd", "file"]
# Transparent huge pages: "pmd" maps PMD-aligned with MADV_HUGEPAGE and counts in PMD-sized
# pages, so a populated page is one PMD-mapped THP; "mthp" maps with MADV_HUGEPAGE at a
# folio size the scenario picks (thp.mthp_sizes()), so a populated page is a PTE-mapped
# large folio. Which THP settings a kind needs (and the run sets as root) is in kindsetup.
Thp = Literal["", "pmd", "mthp"]
MFD_HUGE_SHIFT = 26  # UAPI linux/memfd.h: log2 of the hugetlb page size in bits 26-31


@dataclass(frozen=True)
class KernelGate:
    """An operation this memory kind supports only from ``since`` on; ``change`` names the
    kernel change that brought it."""

    since: str
    change: str


# Feature bits each register mode needs, per family (UAPI: MISSING_SHMEM and
# MISSING_HUGETLBFS 4.11; WP on anon 5.7, PAGEFAULT_FLAG_WP 5.10; WP_HUGETLBFS_SHMEM 5.19;
# MINOR_HUGETLBFS 5.13, MINOR_SHMEM 5.14). A mode absent from a family's map is refused
# by UFFDIO_REGISTER there (MINOR on anonymous memory: EINVAL).
# RWP (7.3) needs UFFD_FEATURE_RWP alone on anon, shmem and hugetlbfs alike.
_WP = Feature.PAGEFAULT_FLAG_WP
_ANON_MODES = {
    RegisterMode.MISSING: Feature(0),
    RegisterMode.WP: _WP,
    RegisterMode.RWP: Feature.RWP,
}
_SHMEM_MODES = {
    RegisterMode.MISSING: Feature.MISSING_SHMEM,
    RegisterMode.WP: _WP | Feature.WP_HUGETLBFS_SHMEM,
    RegisterMode.MINOR: Feature.MINOR_SHMEM,
    RegisterMode.RWP: Feature.RWP,
}
_HUGETLB_MODES = {
    RegisterMode.MISSING: Feature.MISSING_HUGETLBFS,
    RegisterMode.WP: _WP | Feature.WP_HUGETLBFS_SHMEM,
    RegisterMode.MINOR: Feature.MINOR_HUGETLBFS,
    RegisterMode.RWP: Feature.RWP,
}
# hugetlb VMAs never merge on any kernel: hugetlb_vm_ops has a .close handler and
# is_mergeable_vma() refuses VMAs with vm_ops->close.
HUGETLB_NEVER_MERGES = "hugetlb VMAs never merge (hugetlb_vm_ops has .close)"
_HUGETLB_MREMAP = KernelGate(
    "5.16", "'mm, hugepages: add mremap() support for hugepage backed vma'"
)
_HUGETLB_DONTNEED = KernelGate("5.18", "'mm: enable MADV_DONTNEED for hugetlb mappings'")


@dataclass(frozen=True)
class KindSpec:
    """One row of the memory-kind table: everything that differs between kinds.

    ``drop_advice`` is the madvise that gives a range's pages back so the next touch faults
    again as missing: MADV_DONTNEED on private mappings, MADV_REMOVE (punching the backing
    file) on shared ones, where DONTNEED only zaps the PTEs and leaves the page cache.
    ``gates`` holds per-operation minimum kernels ("mremap", "zap" = MADV_DONTNEED,
    "drop" = ``drop_advice``); an operation absent there works on every kernel.
    """

    name: str
    family: Family
    shared: bool
    backing: Backing
    drop_advice: int
    register_features: Mapping[RegisterMode, Feature]
    gates: Mapping[str, KernelGate] = field(default_factory=dict)
    in_catalogue: bool = True  # the file kind needs a path, so scenarios do not run on it
    # In ALL_KINDS and its subsets: every scenario for "all memory" runs on it. The huge-
    # page kinds are not: scenarios where the page size changes what the kernel does list
    # them by name.
    general: bool = True
    thp: Thp = ""
    hugetlb_size: int = 0  # bytes (MFD_HUGE_*); 0: the default hugepage size
    max_pages: int | None = None  # what a scenario may map at most (1 GiB pages)
    since: KernelGate | None = None  # the kind exists from this kernel on

    @property
    def is_hugetlb(self) -> bool:
        return self.family == "hugetlb"

    @property
    def page_size(self) -> int:
        if self.is_hugetlb:
            return self.hugetlb_size or hugetlb_page_size()
        return pmd_size() if self.thp == "pmd" else PAGE_SIZE

    @property
    def memfd_flags(self) -> int:
        flags = sc.MFD_CLOEXEC
        if self.is_hugetlb:
            flags |= sc.MFD_HUGETLB
            if self.hugetlb_size:
                flags |= (self.hugetlb_size.bit_length() - 1) << MFD_HUGE_SHIFT
        return flags

    def pages(self, wanted: int) -> int:
        """``wanted`` pages, or fewer where the kind caps what a scenario maps."""
        return min(wanted, self.max_pages) if self.max_pages else wanted

    @property
    def mmap_flags(self) -> int:
        share = sc.MAP_SHARED if self.shared else sc.MAP_PRIVATE
        return share | (sc.MAP_ANONYMOUS if self.backing == "anonymous" else 0)

    def supports(self, modes: RegisterMode) -> bool:
        return all(mode in self.register_features for mode in RegisterMode if mode & modes)

    def mode_features(self, modes: RegisterMode) -> Feature:
        """Feature bits UFFDIO_API must grant for ``modes`` on this kind."""
        needed = Feature(0)
        for mode in RegisterMode:
            if mode & modes:
                if mode not in self.register_features:
                    raise ValueError(f"{mode.name} faults are not supported on {self.name} memory")
                needed |= self.register_features[mode]
        return needed


KIND_TABLE: tuple[KindSpec, ...] = (
    KindSpec("anon", "anon", False, "anonymous", sc.MADV_DONTNEED, _ANON_MODES),
    KindSpec("shmem", "shmem", True, "anonymous", sc.MADV_REMOVE, _SHMEM_MODES),
    KindSpec("memfd", "shmem", True, "memfd", sc.MADV_REMOVE, _SHMEM_MODES),
    # A memfd mapped MAP_PRIVATE (the selftests' "shmem-private"): vma_is_shmem() holds, so
    # MISSING faults come from shmem_fault() and MINOR works, but the VMA is not VM_SHARED:
    # UFFDIO_COPY and ZEROPAGE install anonymous pages (mfill_atomic_pte's private path)
    # and MADV_DONTNEED drops them, leaving the page cache as it was.
    KindSpec("memfd-private", "shmem", False, "memfd", sc.MADV_DONTNEED, _SHMEM_MODES),
    KindSpec(
        "hugetlb",
        "hugetlb",
        True,
        "memfd",
        sc.MADV_REMOVE,
        _HUGETLB_MODES,
        {"mremap": _HUGETLB_MREMAP, "zap": _HUGETLB_DONTNEED},
    ),
    KindSpec(
        "hugetlb-private",
        "hugetlb",
        False,
        "memfd",
        sc.MADV_DONTNEED,
        _HUGETLB_MODES,
        {"mremap": _HUGETLB_MREMAP, "zap": _HUGETLB_DONTNEED, "drop": _HUGETLB_DONTNEED},
    ),
    KindSpec("file", "shmem", True, "file", sc.MADV_REMOVE, _SHMEM_MODES, in_catalogue=False),
    KindSpec(
        "anon-thp",
        "anon",
        False,
        "anonymous",
        sc.MADV_DONTNEED,
        _ANON_MODES,
        general=False,
        thp="pmd",
    ),
    KindSpec(
        "shmem-thp",
        "shmem",
        True,
        "memfd",
        sc.MADV_REMOVE,
        _SHMEM_MODES,
        general=False,
        thp="pmd",
    ),
    KindSpec(
        "anon-mthp",
        "anon",
        False,
        "anonymous",
        sc.MADV_DONTNEED,
        _ANON_MODES,
        general=False,
        thp="mthp",
        since=KernelGate("6.8", "'mm: thp: support allocation of anonymous multi-size THP'"),
    ),
    KindSpec(
        "shmem-mthp",
        "shmem",
        True,
        "anonymous",
        sc.MADV_REMOVE,
        _SHMEM_MODES,
        general=False,
        thp="mthp",
        since=KernelGate(
            "6.11", "'mm: shmem: add multi-size THP sysfs interface for anonymous shmem'"
        ),
    ),
    KindSpec(
        "hugetlb-1g",
        "hugetlb",
        True,
        "memfd",
        sc.MADV_REMOVE,
        _HUGETLB_MODES,
        {"mremap": _HUGETLB_MREMAP, "zap": _HUGETLB_DONTNEED},
        general=False,
        hugetlb_size=1 << 30,
        max_pages=1,
    ),
    KindSpec(
        "hugetlb-1g-private",
        "hugetlb",
        False,
        "memfd",
        sc.MADV_DONTNEED,
        _HUGETLB_MODES,
        {"mremap": _HUGETLB_MREMAP, "zap": _HUGETLB_DONTNEED, "drop": _HUGETLB_DONTNEED},
        general=False,
        hugetlb_size=1 << 30,
        max_pages=1,
    ),
)
SPECS: dict[str, KindSpec] = {spec.name: spec for spec in KIND_TABLE}
CATALOGUE_KINDS: tuple[str, ...] = tuple(spec.name for spec in KIND_TABLE if spec.in_catalogue)
PMD_THP_KINDS: tuple[str, ...] = tuple(spec.name for spec in KIND_TABLE if spec.thp == "pmd")


def kinds_where(predicate: Callable[[KindSpec], bool]) -> tuple[str, ...]:
    """Names of the catalogue's general kinds whose row satisfies ``predicate``."""
    return tuple(
        spec.name for spec in KIND_TABLE if spec.in_catalogue and spec.general and predicate(spec)
    )


# What `uffdharness stress` runs on: the kinds uffd-stress does, plus memfd and the PMD-THP
# kinds (here, not in stress.py, so the CLI's parser names them without the handler stack).
STRESS_KINDS = kinds_where(lambda spec: True) + PMD_THP_KINDS


@functools.cache
def pmd_size() -> int:
    """The size a PMD maps (a THP), from /sys/kernel/mm/transparent_hugepage/hpage_pmd_size;
    2 MiB (x86-64) where THP is not configured."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as size:
            return int(size.read())
    except (OSError, ValueError):
        return 2 << 20


@functools.cache
def hugetlb_page_size() -> int:
    """The default hugetlbfs page size (what MFD_HUGETLB without a size flag gives), from
    /proc/meminfo's Hugepagesize; 2 MiB where the kernel has no hugetlb support."""
    size_kb = hugepages.default_size_kb()
    return (size_kb or 2048) * 1024


class MemoryKind(str, Enum):
    ANON = "anon"  # private anonymous
    SHMEM = "shmem"  # MAP_SHARED | MAP_ANONYMOUS (shmem underneath)
    MEMFD = "memfd"  # memfd_create, mapped shared
    HUGETLB = "hugetlb"  # memfd MFD_HUGETLB, mapped shared
    HUGETLB_PRIVATE = "hugetlb-private"  # memfd MFD_HUGETLB, mapped private
    MEMFD_PRIVATE = "memfd-private"  # memfd_create, mapped private
    FILE = "file"  # a regular file, mapped shared
    ANON_THP = "anon-thp"  # private anonymous, PMD-aligned, MADV_HUGEPAGE
    SHMEM_THP = "shmem-thp"  # memfd mapped shared, PMD-aligned, MADV_HUGEPAGE
    ANON_MTHP = "anon-mthp"  # private anonymous at an mTHP folio size, MADV_HUGEPAGE
    SHMEM_MTHP = "shmem-mthp"  # MAP_SHARED | MAP_ANONYMOUS at an mTHP folio size (6.11)
    HUGETLB_1G = "hugetlb-1g"  # memfd MFD_HUGETLB | MFD_HUGE_1GB, mapped shared
    HUGETLB_1G_PRIVATE = "hugetlb-1g-private"  # the same mapped private

    @property
    def spec(self) -> KindSpec:
        return SPECS[self.value]

    @property
    def is_hugetlb(self) -> bool:
        return self.spec.is_hugetlb

    @property
    def is_shmem(self) -> bool:
        return self.spec.family == "shmem" and self.spec.backing != "file"

    @property
    def page_size(self) -> int:
        return self.spec.page_size


BUS_ADRERR = 2  # siginfo si_code of SIGBUS: nonexistent physical address (a uffd SIGBUS)


@dataclass(frozen=True)
class CaughtAccess:
    """One access made with SIGBUS caught: whether it raised SIGBUS (and did not complete),
    the signal's si_code and si_addr, and the byte a completed read returned."""

    sigbus: bool
    code: int
    address: int
    value: int | None


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def _page_offsets(pages: None | int | range | Iterable[int], count: int) -> list[int]:
    if pages is None:
        return list(range(count))
    if isinstance(pages, int):
        return [pages]
    return list(pages)


def _without(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(addr, length) ranges less the holes cut out of them."""
    for hole_start, hole_length in holes:
        hole_end = hole_start + hole_length
        pieces = []
        for start, length in ranges:
            end = start + length
            if hole_end <= start or end <= hole_start:
                pieces.append((start, length))
                continue
            if start < hole_start:
                pieces.append((start, hole_start - start))
            if hole_end < end:
                pieces.append((hole_end, end - hole_end))
        ranges = pieces
    return ranges


class Region:
    """A mapping owned by this object: unmapped (with its guard pages) on close()."""

    def __init__(
        self,
        addr: int,
        length: int,
        kind: MemoryKind,
        *,
        page_size: int,
        fd: int = -1,
        owns_fd: bool = False,
        reservation: tuple[int, int] | None = None,
        name: str = "",
    ) -> None:
        self.addr = addr
        self.length = length
        self.kind = kind
        self.page_size = page_size
        self.fd = fd
        self.name = name
        self._owns_fd = owns_fd
        self._reservation = reservation
        self._aliases: list[Region] = []
        self._extra_unmaps: list[tuple[int, int]] = []  # ranges left behind by DONTUNMAP
        self._foreign: list[tuple[int, int]] = []  # reservation ranges another mapping took
        self._closed = False

    # --- geometry ------------------------------------------------------------------------------

    @property
    def pages(self) -> int:
        return self.length // self.page_size

    @property
    def end(self) -> int:
        return self.addr + self.length

    def page_addr(self, index: int) -> int:
        if not -self.pages <= index < self.pages:
            raise IndexError(f"page {index} outside a {self.pages}-page region")
        return self.addr + (index % self.pages) * self.page_size

    def page_index(self, address: int) -> int:
        if not self.addr <= address < self.end:
            raise IndexError(f"{address:#x} outside region [{self.addr:#x}, {self.end:#x})")
        return (address - self.addr) // self.page_size

    def span(self, first_page: int, count: int = 1) -> tuple[int, int]:
        """(address, length) of ``count`` pages starting at ``first_page``."""
        if first_page < 0 or count < 0 or first_page + count > self.pages:
            raise IndexError(f"pages {first_page}+{count} outside a {self.pages}-page region")
        return self.addr + first_page * self.page_size, count * self.page_size

    def view(self, page_size: int) -> Region:
        """The same mapping counted in pages of ``page_size`` (e.g. anonymous memory laid
        out like a hugetlb region, to hold its expected content); owns nothing."""
        if self.length % page_size:
            raise ValueError(f"a {self.length}-byte region is no whole number of {page_size}")
        return Region(self.addr, self.length, self.kind, page_size=page_size, name=self.name)

    def _check(self, offset: int, length: int) -> int:
        if self._closed:
            raise HarnessError("region is closed")
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ValueError(f"[{offset}, {offset + length}) outside a {self.length}-byte region")
        return self.addr + offset

    # --- GIL-free access ---------------------------------------------------------------------

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        length = self.length - offset if length is None else length
        src = self._check(offset, length)
        out = ffi.new("char[]", length)
        lib.uh_copy_out(out, ffi.cast("void *", src), length)
        return ffi.buffer(out, length)[:]

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        source = ffi.from_buffer(data)
        dst = self._check(offset, len(source))
        lib.uh_copy_in(ffi.cast("void *", dst), source, len(source))

    def touch(
        self, pages: None | int | range | Iterable[int] = None, *, write: bool = False
    ) -> int:
        """Read (or rewrite in place) one byte of each page; returns pages touched."""
        self._check(0, 0)
        if pages is None:
            return lib.uh_touch(ffi.cast("char *", self.addr), self.pages, self.page_size, write)
        indexes = _page_offsets(pages, self.pages)
        for index in indexes:
            if not 0 <= index < self.pages:
                raise IndexError(f"page {index} outside a {self.pages}-page region")
        offsets = ffi.new("uint64_t[]", [i * self.page_size for i in indexes])
        return lib.uh_touch_list(ffi.cast("char *", self.addr), offsets, len(indexes), write)

    def access_catching_sigbus(self, offset: int = 0, *, write: bool = False) -> CaughtAccess:
        """Read the byte at ``offset`` (or rewrite it in place, a write fault first) with a
        SIGBUS handler installed for this call in this thread: a SIGBUS (UFFD_FEATURE_SIGBUS,
        UFFDIO_POISON) comes back as ``sigbus=True`` instead of killing the process, and
        the access can be retried in the same process."""
        addr = self._check(offset, 1)
        info = ffi.new("struct uh_sigbus_info *")
        rc = lib.uh_access_catching_sigbus(ffi.cast("char *", addr), int(write), info)
        if rc < 0:
            raise UffdError(-rc, "sigaction(SIGBUS)")
        caught = bool(info.caught)
        value = None if caught or write else info.value
        return CaughtAccess(caught, info.code if caught else 0, info.addr, value)

    def fill(self, pattern: bytes, offset: int = 0, length: int | None = None) -> None:
        """Repeat ``pattern`` over [offset, offset+length)."""
        length = self.length - offset if length is None else length
        dst = self._check(offset, length)
        lib.uh_fill_pattern(ffi.cast("char *", dst), length, pattern, len(pattern))

    def find_mismatch(
        self, pattern: bytes, offset: int = 0, length: int | None = None
    ) -> int | None:
        """Offset (from the region start) of the first byte differing from ``pattern``."""
        length = self.length - offset if length is None else length
        src = self._check(offset, length)
        at = lib.uh_find_pattern_mismatch(ffi.cast("char *", src), length, pattern, len(pattern))
        return None if at < 0 else offset + at

    def verify(self, pattern: bytes, offset: int = 0, length: int | None = None) -> bool:
        return self.find_mismatch(pattern, offset, length) is None

    def fill_indexed(self, seed: int = 0, first_page: int = 0, count: int | None = None) -> None:
        """Give every page distinct content derived from (seed, page index)."""
        count = self.pages - first_page if count is None else count
        dst, length = self.span(first_page, count)
        self._check(dst - self.addr, length)
        lib.uh_fill_indexed(ffi.cast("char *", dst), length, self.page_size, seed, first_page)

    def find_indexed_mismatch(
        self, seed: int = 0, first_page: int = 0, count: int | None = None
    ) -> int | None:
        """Offset of the first word not holding fill_indexed(seed)'s content, or None."""
        count = self.pages - first_page if count is None else count
        src, length = self.span(first_page, count)
        self._check(src - self.addr, length)
        at = lib.uh_find_indexed_mismatch(
            ffi.cast("char *", src), length, self.page_size, seed, first_page
        )
        return None if at < 0 else (src - self.addr) + at

    # --- mapping operations ------------------------------------------------------------------

    def madvise(self, advice: int, offset: int = 0, length: int | None = None) -> None:
        length = self.length - offset if length is None else length
        sc.madvise(self._check(offset, length), length, advice)

    def mprotect(self, prot: int, offset: int = 0, length: int | None = None) -> None:
        length = self.length - offset if length is None else length
        sc.mprotect(self._check(offset, length), length, prot)

    def punch_hole(self, offset: int = 0, length: int | None = None) -> None:
        """fallocate(PUNCH_HOLE | KEEP_SIZE) on the backing file: drops page-cache pages."""
        if self.fd < 0:
            raise HarnessError(f"{self.kind.value} region has no backing file to punch")
        length = self.length - offset if length is None else length
        self._check(offset, length)
        sc.fallocate(self.fd, sc.FALLOC_FL_PUNCH_HOLE | sc.FALLOC_FL_KEEP_SIZE, offset, length)

    def pread(self, length: int, offset: int = 0) -> bytes:
        """Read the backing file (page cache), not the mapping."""
        if self.fd < 0:
            raise HarnessError(f"{self.kind.value} region has no backing file")
        return os.pread(self.fd, length, offset)

    def pwrite(self, data: bytes, offset: int = 0) -> int:
        """Write the backing file directly: fills the page cache without touching the mapping
        (how minor-fault tests populate shmem before CONTINUE). hugetlbfs has no write(2)
        and refuses with EINVAL: fill a shared alias() instead."""
        if self.fd < 0:
            raise HarnessError(f"{self.kind.value} region has no backing file")
        return os.pwrite(self.fd, data, offset)

    def mremap(self, new_length: int, flags: int = sc.MREMAP_MAYMOVE, new_addr: int = 0) -> int:
        """Move/resize this mapping; the region follows it. With MREMAP_DONTUNMAP the old
        range stays mapped (empty) and remains part of this region's reservation."""
        old_addr, old_length = self.addr, self.length
        moved_to = sc.mremap(self.addr, self.length, new_length, flags, new_addr)
        if flags & sc.MREMAP_DONTUNMAP:
            self._extra_unmaps.append((old_addr, old_length))
        elif moved_to != old_addr:
            self._hold(old_addr, old_length)
        elif new_length < old_length:
            self._hold(old_addr + new_length, old_length - new_length)
        self.addr, self.length = moved_to, new_length
        return moved_to

    def _hold(self, addr: int, length: int) -> None:
        """Fill a range this mapping vacated inside its reservation with PROT_NONE again.
        Left empty, any mmap of this process (Python's allocator, a thread stack) may land
        there, and close() unmapping the whole reservation would pull it away under its
        owner. MAP_FIXED_NOREPLACE (4.17) never clobbers: if something took the range
        already, it is left out of what close() unmaps."""
        base, total = self._reservation or (0, 0)
        if not base <= addr < base + total:
            return
        flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_NORESERVE | sc.MAP_FIXED_NOREPLACE
        try:
            placed = sc.mmap(addr, length, sc.PROT_NONE, flags)
        except UffdError:
            placed = None
        if placed != addr:
            if placed is not None:  # a kernel before 4.17 took the flag as a hint
                sc.munmap(placed, length)
            self._foreign.append((addr, length))

    def alias(self, *, shared: bool = True) -> Region:
        """A second mapping of the same backing file (memfd, hugetlb or file region), or of
        the same pages of MAP_SHARED|MAP_ANONYMOUS shmem: mremap() with old_size 0 maps a
        shareable mapping's pages again. Make it before registering the region: that
        mremap copies the VMA, and without EVENT_REMAP the copy is unregistered."""
        if self.fd < 0:
            if not (shared and self.kind.spec.shared and self.kind.spec.backing == "anonymous"):
                raise HarnessError(f"{self.kind.value} region has no backing file to alias")
            addr = sc.mremap(self.addr, 0, self.length, sc.MREMAP_MAYMOVE)
        else:
            flags = sc.MAP_SHARED if shared else sc.MAP_PRIVATE
            addr = sc.mmap(0, self.length, sc.PROT_RW, flags, self.fd, 0)
        alias = Region(
            addr, self.length, self.kind, page_size=self.page_size, fd=self.fd, name=self.name
        )
        self._aliases.append(alias)
        return alias

    # --- ownership -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for alias in self._aliases:
            alias.close()
        errors: list[UffdError] = []
        ranges = _without([self._reservation or (self.addr, self.length)], self._foreign)
        if self._reservation and not (
            self._reservation[0] <= self.addr
            and self.end <= self._reservation[0] + self._reservation[1]
        ):
            ranges.append((self.addr, self.length))  # moved out of its reservation
        ranges += self._extra_unmaps
        for addr, length in ranges:
            try:
                sc.munmap(addr, length)
            except UffdError as exc:
                errors.append(exc)
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
        if errors:
            raise errors[0]

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Region {self.kind.value} {self.addr:#x}+{self.length:#x} "
            f"({self.pages} x {self.page_size})>"
        )


class Reservation:
    """PROT_NONE address space, unmapped on close(): room to move or map things into.

    ``start`` is aligned to ``align`` with at least ``guard`` bytes of the reservation
    below it and ``length + guard`` above it, so what is placed there sits between
    PROT_NONE pages and can never merge with a neighbour: VMA counts then measure only
    what the test did.
    """

    def __init__(self, length: int, align: int = PAGE_SIZE, guard: int = PAGE_SIZE) -> None:
        pad = max(align, guard, PAGE_SIZE)
        self.length = length + 2 * pad
        flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_NORESERVE
        self.base = sc.mmap(0, self.length, sc.PROT_NONE, flags)
        self.start = _align_up(self.base + guard, max(align, PAGE_SIZE))
        self._closed = False

    @property
    def span(self) -> tuple[int, int]:
        return self.base, self.length

    def close(self, keep_out: Iterable[tuple[int, int]] = ()) -> None:
        """Unmap the whole reservation, except the (addr, length) ranges in ``keep_out``:
        holes a test left in it, where another mapping of this process may have landed
        (unmapping that would pull memory from under, say, the Python heap)."""
        if not self._closed:
            self._closed = True
            for start, length in _without([(self.base, self.length)], list(keep_out)):
                sc.munmap(start, length)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChurnArena:
    """One PROT_NONE reservation laid out for VMA churn: ``slot_lengths`` (slots in address
    order), a guard gap, then a parking slot for each slot listed in ``churn`` (as long as
    it), where a churn thread moves that slot's VMA away and back.

    Churning leaves short-lived holes (a VMA moved away, a range unmapped) that another
    mapping of this process may fill meanwhile; the churner then gives that churn slot up
    and adds its number (its position in ``churn``) to ``lost``. close() unmaps the whole
    reservation except the lost slots and their parking, so nothing foreign is unmapped.
    """

    def __init__(
        self,
        slot_lengths: Sequence[int],
        churn: Sequence[int],
        align: int = PAGE_SIZE,
        guard: int = PAGE_SIZE,
    ) -> None:
        self._offsets = [sum(slot_lengths[:i]) for i in range(len(slot_lengths))]
        self._churn = list(churn)
        self.churn_lengths = [slot_lengths[i] for i in self._churn]
        gap = max(self.churn_lengths, default=0)
        parked = sum(slot_lengths) + gap
        self._parking = [parked + sum(self.churn_lengths[:j]) for j in range(len(self._churn))]
        self._reservation = Reservation(parked + sum(self.churn_lengths), align=align, guard=guard)
        self.lost: set[int] = set()

    @property
    def span(self) -> tuple[int, int]:
        return self._reservation.span

    def slot(self, index: int) -> int:
        return self._reservation.start + self._offsets[index]

    def churn(self, number: int) -> int:
        """The address of churn slot ``number`` (a position in ``churn``)."""
        return self.slot(self._churn[number])

    def parking(self, number: int) -> int:
        return self._reservation.start + self._parking[number]

    def close(self) -> None:
        keep_out = [(self.churn(j), self.churn_lengths[j]) for j in self.lost]
        keep_out += [(self.parking(j), self.churn_lengths[j]) for j in self.lost]
        self._reservation.close(keep_out)


def allocate(
    kind: MemoryKind | str,
    pages: int | None = None,
    *,
    length: int | None = None,
    guard: bool = True,
    name: str = "uffdharness",
    path: str | None = None,
    populate: bool = False,
    align: int | None = None,
) -> Region:
    """Map a region of ``pages`` pages (of the kind's page size) or ``length`` bytes.

    ``align``: the start's alignment (a power of two); by default the page size, and for
    an mTHP kind the largest power of two dividing ``length`` up to a PMD, so a region of
    one folio's size can hold exactly that folio.
    """
    kind = MemoryKind(kind)
    spec = kind.spec
    page_size = spec.page_size
    if length is None:
        if pages is None:
            raise TypeError("give pages or length")
        length = pages * page_size
    if length <= 0 or length % page_size:
        raise ValueError(f"length {length} is not a positive multiple of {page_size}")
    if align is None:
        align = min(length & -length, pmd_size()) if spec.thp == "mthp" else page_size
    if align & (align - 1) or align < PAGE_SIZE:
        raise ValueError(f"alignment {align} is no power of two of at least {PAGE_SIZE}")

    fd = -1
    if spec.backing == "memfd":
        fd = sc.memfd_create(name, spec.memfd_flags)
    elif spec.backing == "file":
        if path is None:
            raise TypeError("a file region needs a path")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if fd >= 0:
            os.ftruncate(fd, length)
        reservation = None
        start, fixed = 0, 0
        # hugetlb mappings must be aligned to the page size, THP ones to the folio size
        if guard or spec.is_hugetlb or spec.thp or align > PAGE_SIZE:
            reservation = Reservation(length, align, PAGE_SIZE if guard else 0)
            start, fixed = reservation.start, sc.MAP_FIXED
        flags = spec.mmap_flags | fixed | (sc.MAP_POPULATE if populate else 0)
        try:
            addr = sc.mmap(start, length, sc.PROT_RW, flags, fd, 0)
        except UffdError as exc:
            if reservation:
                reservation.close()
            if spec.is_hugetlb and exc.errno_name == "ENOMEM":
                exc.detail = (
                    f"no free {page_size >> 20} MiB hugepages: reserve them with HugepagePool"
                )
                exc.strerror = exc._format(exc.errno)
            raise
        if spec.thp:
            try:
                sc.madvise(addr, length, sc.MADV_HUGEPAGE)
            except BaseException:
                sc.munmap(*(reservation.span if reservation else (addr, length)))
                raise
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return Region(
        addr,
        length,
        kind,
        page_size=page_size,
        fd=fd,
        owns_fd=fd >= 0,
        reservation=reservation.span if reservation else None,
        name=name,
    )
