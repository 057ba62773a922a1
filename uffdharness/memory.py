"""Memory regions of every kind the harness registers, with GIL-free access helpers.

Every access helper (read, write, touch, fill, verify) is one cffi call, and cffi releases
the GIL for its duration: a thread that faults on registered memory inside it sleeps in the
kernel without blocking a Python handler thread. Never read registered memory through a raw
memoryview: that faults with the GIL held and deadlocks a Python handler (DESIGN.md 3).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from enum import Enum

from . import syscalls as sc
from ._native import ffi, lib
from .errors import HarnessError, UffdError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
HUGE_PAGE_SIZE = 2 * 1024 * 1024


class MemoryKind(str, Enum):
    ANON = "anon"  # private anonymous
    SHMEM = "shmem"  # MAP_SHARED | MAP_ANONYMOUS (shmem underneath)
    MEMFD = "memfd"  # memfd_create, mapped shared
    HUGETLB = "hugetlb"  # memfd MFD_HUGETLB, mapped shared
    HUGETLB_PRIVATE = "hugetlb-private"  # memfd MFD_HUGETLB, mapped private
    FILE = "file"  # a regular file, mapped shared

    @property
    def is_hugetlb(self) -> bool:
        return self in (MemoryKind.HUGETLB, MemoryKind.HUGETLB_PRIVATE)

    @property
    def is_shmem(self) -> bool:
        return self in (MemoryKind.SHMEM, MemoryKind.MEMFD)

    @property
    def page_size(self) -> int:
        return HUGE_PAGE_SIZE if self.is_hugetlb else PAGE_SIZE


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def _page_offsets(pages: None | int | range | Iterable[int], count: int) -> list[int]:
    if pages is None:
        return list(range(count))
    if isinstance(pages, int):
        return [pages]
    return list(pages)


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
        old_addr = self.addr
        moved_to = sc.mremap(self.addr, self.length, new_length, flags, new_addr)
        if flags & sc.MREMAP_DONTUNMAP:
            self._extra_unmaps.append((old_addr, self.length))
        self.addr, self.length = moved_to, new_length
        return moved_to

    def alias(self, *, shared: bool = True) -> Region:
        """A second mapping of the same backing file (memfd, hugetlb or file region)."""
        if self.fd < 0:
            raise HarnessError(f"{self.kind.value} region has no backing file to alias")
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
        ranges = [self._reservation or (self.addr, self.length)]
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


def _place(length: int, align: int, guard: bool) -> tuple[int, tuple[int, int] | None]:
    """Reserve PROT_NONE address space and return (aligned start, reservation).

    With guard=True the region sits between PROT_NONE pages, so it can never merge with a
    neighbour and VMA counts measure only what the test did (DESIGN.md 4).
    """
    pad = max(align, PAGE_SIZE)
    total = length + 2 * pad
    base = sc.mmap(0, total, sc.PROT_NONE, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_NORESERVE)
    start = _align_up(base + (PAGE_SIZE if guard else 0), align)
    return start, (base, total)


def allocate(
    kind: MemoryKind | str,
    pages: int | None = None,
    *,
    length: int | None = None,
    guard: bool = True,
    name: str = "uffdharness",
    path: str | None = None,
    populate: bool = False,
) -> Region:
    """Map a region of ``pages`` pages (of the kind's page size) or ``length`` bytes."""
    kind = MemoryKind(kind)
    page_size = kind.page_size
    if length is None:
        if pages is None:
            raise TypeError("give pages or length")
        length = pages * page_size
    if length <= 0 or length % page_size:
        raise ValueError(f"length {length} is not a positive multiple of {page_size}")

    fd = -1
    if kind in (MemoryKind.MEMFD, MemoryKind.HUGETLB, MemoryKind.HUGETLB_PRIVATE):
        flags = sc.MFD_CLOEXEC | (sc.MFD_HUGETLB if kind.is_hugetlb else 0)
        fd = sc.memfd_create(name, flags)
    elif kind is MemoryKind.FILE:
        if path is None:
            raise TypeError("a file region needs a path")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if fd >= 0:
            os.ftruncate(fd, length)
        if guard or kind.is_hugetlb:
            start, reservation = _place(length, page_size, guard)
            fixed = sc.MAP_FIXED
        else:
            start, reservation, fixed = 0, None, 0
        try:
            if kind is MemoryKind.ANON:
                flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS
            elif kind is MemoryKind.SHMEM:
                flags = sc.MAP_SHARED | sc.MAP_ANONYMOUS
            elif kind is MemoryKind.HUGETLB_PRIVATE:
                flags = sc.MAP_PRIVATE
            else:
                flags = sc.MAP_SHARED
            if populate:
                flags |= sc.MAP_POPULATE
            addr = sc.mmap(start, length, sc.PROT_RW, flags | fixed, fd, 0)
        except UffdError as exc:
            if reservation:
                sc.munmap(*reservation)
            if kind.is_hugetlb and exc.errno_name == "ENOMEM":
                exc.detail = "no free 2 MiB hugepages: reserve them with HugepagePool"
                exc.strerror = exc._format(exc.errno)
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
        reservation=reservation,
        name=name,
    )
