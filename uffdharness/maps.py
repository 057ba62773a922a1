"""Parse /proc/PID/maps and /proc/PID/smaps into frozen records.

This is the observation side of every merge and fragmentation check: a scenario maps a
region, acts on it, and asks which VMAs now cover it and which VmFlags (``um``/``uw``/``ui``
= registered for MISSING / WP / MINOR faults) each carries.

Speed comes from doing per-line work in C-level loops rather than Python ones:

- header lines are cut at the kernel's name column, split all at once and converted column
  by column;
- an smaps block is a header line, then "Size:", the other counters and "VmFlags:". The
  VMAs of a fragmented region print byte-identical counter text, so each distinct text is
  parsed once and its :class:`SmapsCounters` and flag set are shared;
- the distinct texts are parsed column by column, every line checked against the key the
  first block has at that position (every block of one kernel has the same keys in the
  same order, fs/proc/task_mmu.c ``show_smap``).

Text that does not have that regular shape (hand-made fixtures, blocks from different
kernels pasted together, kernels before 3.8 without VmFlags) goes through plain
line-by-line parsers that give the same records.
"""

from __future__ import annotations

import gc
import os
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from itertools import repeat
from operator import attrgetter, itemgetter, sub
from typing import Any, NamedTuple, TypeVar

__all__ = [
    "PAGE_SIZE",
    "SmapsCounters",
    "SmapsVma",
    "Vma",
    "VmaChange",
    "VmaDiff",
    "covers_single_vma",
    "diff",
    "is_single_vma",
    "layout",
    "overlapping",
    "parse_maps",
    "parse_smaps",
    "read_maps",
    "read_maps_range",
    "read_smaps",
    "read_smaps_range",
    "snapshot",
]

PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")

Pid = int | str
V = TypeVar("V", bound="Vma")

_DELETED = " (deleted)"
_UFFD_FLAGS = frozenset({"um", "uw", "ui"})


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Vma:
    """One line of /proc/PID/maps. ``path`` is the kernel's text, "" when anonymous; names
    the kernel escapes (a newline prints as ``\\012``) stay escaped."""

    start: int
    end: int
    perms: str
    pgoff: int
    dev: str
    inode: int
    path: str

    @property
    def size(self) -> int:
        return self.end - self.start

    def pages(self, page_size: int = PAGE_SIZE) -> int:
        return (self.end - self.start) // page_size

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def deleted(self) -> bool:
        # The kernel appends " (deleted)" to unlinked files; memfd, SysV shm and shared
        # anonymous mappings are all unlinked shmem files. A file really named
        # "x (deleted)" prints the same: the maps text cannot tell them apart.
        return self.path.endswith(_DELETED)

    @property
    def path_without_deleted(self) -> str:
        return self.path[: -len(_DELETED)] if self.path.endswith(_DELETED) else self.path

    def overlaps(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end


class SmapsCounters(NamedTuple):
    """The numbers smaps prints for one VMA, in bytes (``thp_eligible`` and lines without
    a ``kB`` unit as printed). Lines without a field here (``Pss_Dirty``, ``KSM``,
    ``ProtectionKey``...) are kept in ``extra_items`` in kernel order. Counters a kernel
    does not print are 0; ``thp_eligible`` is None before 4.15."""

    kernel_page_size: int = 0
    mmu_page_size: int = 0
    rss: int = 0
    pss: int = 0
    shared_clean: int = 0
    shared_dirty: int = 0
    private_clean: int = 0
    private_dirty: int = 0
    referenced: int = 0
    anonymous: int = 0
    lazyfree: int = 0
    anon_huge_pages: int = 0
    shmem_pmd_mapped: int = 0
    file_pmd_mapped: int = 0
    shared_hugetlb: int = 0
    private_hugetlb: int = 0
    swap: int = 0
    swap_pss: int = 0
    locked: int = 0
    thp_eligible: int | None = None
    extra_items: tuple[tuple[str, int], ...] = ()

    @property
    def extra(self) -> Mapping[str, int]:
        return dict(self.extra_items)


def _counter(name: str) -> Any:
    return property(attrgetter(f"counters.{name}"), doc=f"counters.{name}")


@dataclass(frozen=True, slots=True)
class SmapsVma(Vma):
    """One block of /proc/PID/smaps: the maps fields, the ``VmFlags`` mnemonics and the
    counters. Every counter is also readable directly (``vma.rss``); ``size`` is the
    inherited end - start, which is what the kernel prints as ``Size``.

    VMAs whose counters print identically share one ``counters`` record: a fragmented
    region of 20k VMAs then costs one parse of its few distinct counter texts."""

    vm_flags: frozenset[str] = frozenset()
    counters: SmapsCounters = SmapsCounters()

    kernel_page_size = _counter("kernel_page_size")
    mmu_page_size = _counter("mmu_page_size")
    rss = _counter("rss")
    pss = _counter("pss")
    shared_clean = _counter("shared_clean")
    shared_dirty = _counter("shared_dirty")
    private_clean = _counter("private_clean")
    private_dirty = _counter("private_dirty")
    referenced = _counter("referenced")
    anonymous = _counter("anonymous")
    lazyfree = _counter("lazyfree")
    anon_huge_pages = _counter("anon_huge_pages")
    shmem_pmd_mapped = _counter("shmem_pmd_mapped")
    file_pmd_mapped = _counter("file_pmd_mapped")
    shared_hugetlb = _counter("shared_hugetlb")
    private_hugetlb = _counter("private_hugetlb")
    swap = _counter("swap")
    swap_pss = _counter("swap_pss")
    locked = _counter("locked")
    thp_eligible = _counter("thp_eligible")
    extra_items = _counter("extra_items")
    extra = _counter("extra")

    @property
    def uffd_missing(self) -> bool:
        return "um" in self.vm_flags

    @property
    def uffd_wp(self) -> bool:
        return "uw" in self.vm_flags

    @property
    def uffd_minor(self) -> bool:
        return "ui" in self.vm_flags

    @property
    def uffd_registered(self) -> bool:
        return not self.vm_flags.isdisjoint(_UFFD_FLAGS)


# smaps key -> SmapsCounters field. "Size" is not one: it is always end - start.
_COUNTER_KEYS: dict[bytes, str] = {
    b"KernelPageSize": "kernel_page_size",
    b"MMUPageSize": "mmu_page_size",
    b"Rss": "rss",
    b"Pss": "pss",
    b"Shared_Clean": "shared_clean",
    b"Shared_Dirty": "shared_dirty",
    b"Private_Clean": "private_clean",
    b"Private_Dirty": "private_dirty",
    b"Referenced": "referenced",
    b"Anonymous": "anonymous",
    b"LazyFree": "lazyfree",
    b"AnonHugePages": "anon_huge_pages",
    b"ShmemPmdMapped": "shmem_pmd_mapped",
    b"FilePmdMapped": "file_pmd_mapped",
    b"Shared_Hugetlb": "shared_hugetlb",
    b"Private_Hugetlb": "private_hugetlb",
    b"Swap": "swap",
    b"SwapPss": "swap_pss",
    b"Locked": "locked",
    b"THPeligible": "thp_eligible",
}
_VMA_FIELDS = tuple(f.name for f in fields(Vma))
_HEX_DIGITS = frozenset(b"0123456789abcdef")

# show_vma_header_prefix() pads the seq_file to 25 + 6 * sizeof(void *) - 1 columns (72 on
# a 64-bit kernel) and show_map_vma() then writes one space before the name.
_NAME_COLUMN = 73


# ---------------------------------------------------------------------------- reading


def _proc_path(pid: Pid, name: str) -> str:
    return f"/proc/{pid}/{name}"


_MAPS_MARK = b"\n"
_SMAPS_MARK = b"\nVmFlags:"


def _read_proc(path: str) -> bytes:
    """The whole of a /proc file. FileIO.readall grows one buffer as the kernel fills it,
    a little faster than joining fixed-size chunks."""
    with open(path, "rb", buffering=0) as file:
        return file.read()


def _read_proc_until(path: str, marker: bytes, stop_at: int) -> bytes:
    """Read a /proc maps-like file up to the first VMA starting at or above ``stop_at``.

    The kernel lists VMAs in address order and produces the text as it is read, a page of
    whole records per read() call, so stopping early spares it the rest (for smaps, the
    page-table walk of every later VMA). ``marker`` begins the line before a header."""
    parts: list[bytes] = []
    at_line_start = True
    with open(path, "rb", buffering=0) as file:
        while chunk := file.read(1 << 16):
            if at_line_start and _vma_start_at(chunk, 0) >= stop_at:
                break
            idx = chunk.rfind(marker, 0, len(chunk) - 1)
            header = chunk.find(b"\n", idx + len(marker) - 1) + 1 if idx >= 0 else 0
            if header and _vma_start_at(chunk, header) >= stop_at:
                parts.append(chunk[:header])
                break
            parts.append(chunk)
            at_line_start = chunk.endswith(b"\n")
    return b"".join(parts)


def _vma_start_at(text: bytes, pos: int) -> int:
    """Start address of the header line at ``pos`` if it is there in full, else -1."""
    dash = text.find(b"-", pos, pos + 17)
    if dash <= pos or text[pos] not in _HEX_DIGITS:
        return -1
    try:
        return int(text[pos:dash], 16)
    except ValueError:
        return -1


def read_maps(pid: Pid = "self") -> list[Vma]:
    """All VMAs of ``pid`` from /proc/PID/maps."""
    return parse_maps(_read_proc(_proc_path(pid, "maps")))


def read_smaps(pid: Pid = "self") -> list[SmapsVma]:
    """All VMAs of ``pid`` from /proc/PID/smaps."""
    return parse_smaps(_read_proc(_proc_path(pid, "smaps")))


def read_maps_range(start: int, end: int, pid: Pid = "self") -> list[Vma]:
    """VMAs of ``pid`` intersecting [start, end), reading maps only as far as needed."""
    text = _read_proc_until(_proc_path(pid, "maps"), _MAPS_MARK, end)
    return overlapping(parse_maps(text), start, end)


def read_smaps_range(start: int, end: int, pid: Pid = "self") -> list[SmapsVma]:
    """VMAs of ``pid`` intersecting [start, end) with their smaps counters.

    Stops reading after the range. Like any /proc/PID/smaps read it spans several read()
    calls, each taking mmap_lock on its own, so it is not atomic against a process that is
    changing its mappings meanwhile."""
    text = _read_proc_until(_proc_path(pid, "smaps"), _SMAPS_MARK, end)
    return overlapping(parse_smaps(text), start, end)


def snapshot(start: int, length: int, pid: Pid = "self") -> list[SmapsVma]:
    """smaps records of the VMAs intersecting [start, start + length)."""
    return read_smaps_range(start, start + length, pid)


# ---------------------------------------------------------------------------- parsing


class _LayoutMismatch(Exception):
    """The smaps text is not one block shape repeated; use the line-by-line parser."""


class _Converted(dict):  # type: ignore[type-arg]
    """Memoised conversion of repeating raw values; a hit is one dict lookup."""

    def __init__(self, convert: Callable[[bytes], Any]) -> None:
        super().__init__()
        self.convert = convert

    def __missing__(self, raw: bytes) -> Any:
        value = self[raw] = self.convert(raw)
        return value


def _ascii(raw: bytes) -> str:
    return raw.decode("ascii", "surrogateescape")


def _flag_set(raw: bytes) -> frozenset[str]:
    return frozenset(raw.decode("ascii", "replace").split())


def _flag_line(line: bytes) -> frozenset[str]:
    if not line.startswith(b"VmFlags:"):
        raise _LayoutMismatch(line)
    return _flag_set(line[8:])


def _value(text: bytes) -> int:
    parts = text.split()
    if len(parts) == 2 and parts[1] == b"kB":
        return int(parts[0]) * 1024
    if len(parts) == 1:
        return int(parts[0])
    raise ValueError(f"unexpected smaps value {text!r}")


class _KeyedValues(dict):  # type: ignore[type-arg]
    """Line -> value for one smaps key. A line that does not start with the key means the
    blocks differ in shape."""

    def __init__(self, key: bytes) -> None:
        super().__init__()
        self.prefix = key + b":"

    def __missing__(self, line: bytes) -> int:
        if not line.startswith(self.prefix):
            raise _LayoutMismatch(line)
        value = self[line] = _value(line[len(self.prefix) :])
        return value


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The parsers allocate several objects per VMA and no reference cycles; letting the
    cyclic collector run meanwhile only re-scans them (a fifth of the time at 20k VMAs)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _as_bytes(text: str | bytes) -> bytes:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text


def _lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def parse_maps(text: str | bytes) -> list[Vma]:
    """Records for /proc/PID/maps text."""
    with _gc_paused():
        headers = _lines(_as_bytes(text))
        return _build(Vma, _header_columns(headers), len(headers))


def parse_smaps(text: str | bytes) -> list[SmapsVma]:
    """Records for /proc/PID/smaps text."""
    data = _as_bytes(text)
    with _gc_paused():
        try:
            headers, vm_flags, counters = _smaps_blocks_regular(data)
            columns = _header_columns(headers)
        except (_LayoutMismatch, ValueError):
            headers, vm_flags, counters = _smaps_blocks_by_line(data)
            columns = _header_columns(headers)
        columns["vm_flags"] = vm_flags
        columns["counters"] = counters
        return _build(SmapsVma, columns, len(headers))


_Blocks = tuple[Sequence[bytes], list[frozenset[str]], list[SmapsCounters]]


def _smaps_blocks_regular(data: bytes) -> _Blocks:
    """Header lines, VmFlags and counters of each block, for kernel output."""
    pieces = data.split(b"\nSize:")
    # pieces[0] is the first header; every other piece is one block's Size value, other
    # counters and VmFlags, then the next block's header ("" after the last block).
    if len(pieces) < 2 or b"\n" in pieces[0]:
        raise _LayoutMismatch("not smaps text")
    blocks, _, next_headers = zip(*map(bytes.rpartition, pieces[1:], repeat(b"\n")), strict=True)
    if next_headers[-1]:
        raise _LayoutMismatch("text after the last VmFlags line")
    distinct = list(dict.fromkeys(blocks))
    counters, vm_flags = _parse_blocks(distinct)
    counters_of = dict(zip(distinct, counters, strict=True))
    flags_of = dict(zip(distinct, vm_flags, strict=True))
    return (
        (pieces[0],) + next_headers[:-1],
        list(map(flags_of.__getitem__, blocks)),
        list(map(counters_of.__getitem__, blocks)),
    )


def _parse_blocks(blocks: list[bytes]) -> tuple[list[SmapsCounters], list[frozenset[str]]]:
    """Counters and VmFlags of blocks of identical shape (the Size value, "Key: value"
    lines, the VmFlags line), one key column at a time. The Size value is skipped."""
    width = blocks[0].count(b"\n") + 1
    lines = b"\n".join(blocks).split(b"\n")
    if width < 2 or len(lines) != width * len(blocks):
        raise _LayoutMismatch("blocks differ in length")
    named: dict[str, list[int]] = {}
    extras: list[tuple[str, list[int]]] = []
    for offset in range(1, width - 1):
        key = lines[offset].partition(b":")[0]
        values = list(map(_KeyedValues(key).__getitem__, lines[offset::width]))
        if key in _COUNTER_KEYS:
            named[_COUNTER_KEYS[key]] = values
        else:
            extras.append((key.decode("ascii", "replace"), values))
    count = len(blocks)
    extra_rows: Iterable[tuple[tuple[str, int], ...]] = (
        zip(*(zip(repeat(name), values) for name, values in extras), strict=True)
        if extras
        else repeat((), count)
    )
    columns = [
        named.get(name) or repeat(default, count)
        for name, default in SmapsCounters._field_defaults.items()
        if name != "extra_items"
    ]
    rows = zip(*columns, extra_rows, strict=False)  # repeat() columns never end
    counters = list(map(tuple.__new__, repeat(SmapsCounters), rows))
    return counters, list(map(_flag_line, lines[width - 1 :: width]))


def _smaps_blocks_by_line(data: bytes) -> _Blocks:
    """Header lines, VmFlags and counters of each block, for any smaps text."""
    headers: list[bytes] = []
    flag_texts: list[bytes] = []
    blocks: list[dict[bytes, int]] = []
    block: dict[bytes, int] = {}
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line:
            continue
        if line[0] in _HEX_DIGITS:
            headers.append(line)
            flag_texts.append(b"")
            block = {}
            blocks.append(block)
            continue
        key, colon, value = line.partition(b":")
        if not colon or not headers:
            raise ValueError(f"smaps line {number}: not a header or 'Key: value': {line!r}")
        if key == b"VmFlags":
            flag_texts[-1] = value
        elif key != b"Size":
            try:
                block[key] = _value(value)
            except ValueError as exc:
                # A line this module does not know may hold text (some vendor kernels
                # print "Name:"); it is skipped. A known counter must be a number.
                if key in _COUNTER_KEYS:
                    raise ValueError(f"smaps line {number}: {exc}") from None
    counters = []
    for block in blocks:
        known = {_COUNTER_KEYS[key]: value for key, value in block.items() if key in _COUNTER_KEYS}
        extra = tuple(
            (key.decode("ascii", "replace"), value)
            for key, value in block.items()
            if key not in _COUNTER_KEYS
        )
        counters.append(SmapsCounters(**known, extra_items=extra))
    return headers, list(map(_Converted(_flag_set).__getitem__, flag_texts)), counters


def _split_header(line: bytes) -> list[bytes]:
    """Header fields of a line not in the kernel's exact spacing (hand-made fixtures)."""
    parts = line.split(None, 5)
    if len(parts) < 5 or b"-" not in parts[0]:
        raise ValueError(f"not a maps line: {line!r}")
    if len(parts) == 5:
        parts.append(b"")
    return parts


def _header_columns(headers: Sequence[bytes]) -> dict[str, Any]:
    """Columns of the Vma fields for the given header lines."""
    if not headers:
        return {name: [] for name in _VMA_FIELDS}
    split = _header_fields_at_kernel_columns(headers) or _header_fields_any(headers)
    addrs, perms, pgoffs, devs, inodes, paths = split
    bounds = b"-".join(addrs).split(b"-")
    if len(bounds) != 2 * len(headers):
        raise ValueError("malformed address range in maps text")
    numbers = list(map(int, bounds, repeat(16)))
    texts = _Converted(_ascii)
    return {
        "start": numbers[0::2],
        "end": numbers[1::2],
        "perms": list(map(texts.__getitem__, perms)),
        "pgoff": list(map(int, pgoffs, repeat(16))),
        "dev": list(map(texts.__getitem__, devs)),
        "inode": list(map(_Converted(int).__getitem__, inodes)),
        # Names cannot hold "\n" (the kernel escapes it), so they can be decoded joined.
        "path": b"\n".join(paths).decode("utf-8", "surrogateescape").split("\n"),
    }


_head = itemgetter(slice(0, _NAME_COLUMN))
_name = itemgetter(slice(_NAME_COLUMN, None))


def _header_fields_at_kernel_columns(headers: Sequence[bytes]) -> list[Sequence[bytes]] | None:
    """Field columns when every name starts at the kernel's name column, else None.

    Cuts each line at that column and splits all the heads in one call; the "|" token
    after each head proves every head gave exactly five fields."""
    joined = b" | ".join(map(_head, headers)) + b" |"
    tokens = joined.split()
    count = len(headers)
    if len(tokens) != 6 * count or tokens[5::6].count(b"|") != count:
        return None
    names: list[bytes] = list(map(_name, headers))
    # A named line has the padding's last space and the separating space at columns 71
    # and 72 (so its head ends in three spaces once joined); anonymous lines end in
    # "0 ". A longer prefix (huge inode) pushes the name right and fails this.
    if joined.count(b"   |") != count - names.count(b""):
        return None
    return [tokens[0::6], tokens[1::6], tokens[2::6], tokens[3::6], tokens[4::6], names]


def _header_fields_any(headers: Sequence[bytes]) -> list[Sequence[bytes]]:
    """Field columns for any spacing: names keep leading spaces beyond the padding."""
    # The prefix fields are separated by single spaces and the prefix ends with one
    # (anonymous lines end "... 00:00 0 "), so a kernel line always gives six parts.
    rows = list(map(bytes.split, headers, repeat(b" "), repeat(5)))
    if min(map(len, rows)) != 6:
        rows = [
            row if len(row) == 6 else _split_header(line)
            for row, line in zip(rows, headers, strict=True)
        ]
    addrs, perms, pgoffs, devs, inodes, rests = zip(*rows, strict=True)
    paths = list(map(bytes.lstrip, rests, repeat(b" ")))
    if max(map(sub, map(len, headers), map(len, paths))) > _NAME_COLUMN:
        paths = [
            _exact_path(line, rest, path)
            for line, rest, path in zip(headers, rests, paths, strict=True)
        ]
    return [addrs, perms, pgoffs, devs, inodes, paths]


def _exact_path(line: bytes, rest: bytes, stripped: bytes) -> bytes:
    """Keep leading spaces that belong to the name: remove only the kernel's padding."""
    prefix_len = len(line) - len(rest)
    name_at = max(prefix_len, _NAME_COLUMN - 1) + 1
    if len(line) - len(stripped) > name_at and not line[prefix_len:name_at].strip(b" "):
        return line[name_at:]
    return stripped


def _build(cls: type[V], columns: Mapping[str, Iterable[Any]], count: int) -> list[V]:
    """Records from columns. Each field is stored through its slot descriptor for all
    records at once; the generated frozen __init__ does the same one object.__setattr__
    call at a time, at about twice the cost."""
    records = list(map(object.__new__, repeat(cls, count)))
    for field in fields(cls):  # type: ignore[arg-type]
        deque(map(getattr(cls, field.name).__set__, records, columns[field.name]), maxlen=0)
    return records


# ---------------------------------------------------------------------------- queries


def overlapping(vmas: Sequence[V], start: int, end: int) -> list[V]:
    """The VMAs intersecting [start, end); ``vmas`` in address order, as the kernel lists
    them."""
    found: list[V] = []
    for vma in vmas[bisect_right(vmas, start, key=attrgetter("end")) :]:
        if vma.start >= end:
            break
        found.append(vma)
    return found


def layout(
    vmas: Sequence[Vma],
    base: int,
    length: int | None = None,
    page_size: int = PAGE_SIZE,
    flags: Iterable[str] = ("um", "uw", "ui"),
) -> list[tuple[int, int, set[str]]]:
    """The VMAs over [base, base + length) as (first page, end page, flags) relative to
    ``base``, clipped to the range, e.g. ``[(0, 5, {"um"}), (5, 20, set())]``. ``flags``
    are the VmFlags reported (plain maps records have none). Unmapped holes are absent.
    Without ``length`` the range runs to the end of the last VMA given."""
    if length is None:
        length = max(vmas[-1].end - base, 0) if vmas else 0
    if base % page_size or length % page_size:
        raise ValueError(f"range {base:#x}+{length:#x} is not {page_size}-byte aligned")
    wanted = frozenset(flags)
    end = base + length
    return [
        (
            (max(vma.start, base) - base) // page_size,
            (min(vma.end, end) - base) // page_size,
            set(vma.vm_flags & wanted) if isinstance(vma, SmapsVma) else set(),
        )
        for vma in overlapping(vmas, base, end)
    ]


def covers_single_vma(vmas: Sequence[Vma], start: int, end: int) -> bool:
    """True when one VMA of ``vmas`` contains all of [start, end)."""
    found = overlapping(vmas, start, end)
    return len(found) == 1 and found[0].start <= start and end <= found[0].end


def is_single_vma(start: int, end: int, pid: Pid = "self") -> bool:
    """True when [start, end) lies inside one VMA of ``pid`` right now."""
    return covers_single_vma(read_maps_range(start, end, pid), start, end)


@dataclass(frozen=True, slots=True)
class VmaChange:
    """The same [start, end) in both lists with different contents. ``fields`` names what
    differs; smaps counters are named individually (``rss``, ``extra_items``...)."""

    before: Vma
    after: Vma
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VmaDiff:
    """What differs between two VMA lists; VMAs are matched by their [start, end)."""

    added: tuple[Vma, ...]
    removed: tuple[Vma, ...]
    changed: tuple[VmaChange, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    @property
    def layout_changed(self) -> bool:
        """A VMA was split, merged, created or unmapped (not only counters or flags)."""
        return bool(self.added or self.removed)


def diff(before: Iterable[Vma], after: Iterable[Vma]) -> VmaDiff:
    """Added, removed and changed VMAs from ``before`` to ``after``."""
    old = {(vma.start, vma.end): vma for vma in before}
    new = {(vma.start, vma.end): vma for vma in after}
    changed = tuple(
        VmaChange(old[span], new[span], _changed_fields(old[span], new[span]))
        for span in sorted(old.keys() & new.keys())
        if old[span] != new[span]
    )
    return VmaDiff(
        added=tuple(new[span] for span in sorted(new.keys() - old.keys())),
        removed=tuple(old[span] for span in sorted(old.keys() - new.keys())),
        changed=changed,
    )


def _changed_fields(before: Vma, after: Vma) -> tuple[str, ...]:
    if type(before) is not type(after):
        return ("type",)
    names: list[str] = []
    for field in fields(before):
        old, new = getattr(before, field.name), getattr(after, field.name)
        if field.name == "counters":
            names.extend(n for n, o, w in zip(old._fields, old, new, strict=True) if o != w)
        elif old != new:
            names.append(field.name)
    return tuple(names)


UFFD_VM_FLAGS = frozenset({"um", "uw", "ui"})  # VM_UFFD_MISSING, VM_UFFD_WP, VM_UFFD_MINOR


def uffd_vm_flags(start: int, end: int, pid: int | str = "self") -> list[str]:
    """The smaps VmFlags marking uffd registration (um, uw, ui) on VMAs in [start, end)."""
    flags = {flag for vma in read_smaps_range(start, end, pid) for flag in vma.vm_flags}
    return sorted(flags & UFFD_VM_FLAGS)
