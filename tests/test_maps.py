"""uffdharness.maps: every line shape from fixture text, then the live process's own VMAs.

The live tests build their own regions with libc mmap/mprotect (through ctypes) and isolate
each between PROT_NONE guard pages, so no neighbouring mapping can merge into it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import mmap
import os
import pickle
import platform
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from uffdharness.maps import (
    PAGE_SIZE,
    SmapsCounters,
    SmapsVma,
    Vma,
    covers_single_vma,
    diff,
    is_single_vma,
    layout,
    overlapping,
    parse_maps,
    parse_smaps,
    read_maps,
    read_maps_range,
    read_smaps,
    read_smaps_range,
    snapshot,
)

FIXTURES = Path(__file__).parent / "fixtures" / "maps"
KB = 1024
PAGE = PAGE_SIZE

# ---------------------------------------------------------------------------- libc


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]
_libc.syscall.restype = ctypes.c_long

MAP_FAILED = ctypes.c_void_p(-1).value
PROT_NONE = 0
RW = mmap.PROT_READ | mmap.PROT_WRITE
PRIVATE_ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
SHARED_ANON = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS

PR_SET_VMA = 0x53564D41
PR_SET_VMA_ANON_NAME = 0
SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}.get(platform.machine())
UFFD_USER_MODE_ONLY = 1
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register)
UFFDIO_REGISTER_MODE_MISSING = 1
UFFDIO_REGISTER_MODE_WP = 2


def _os_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def mprotect(addr: int, pages: int, prot: int) -> None:
    if _libc.mprotect(addr, pages * PAGE, prot) != 0:
        raise _os_error("mprotect")


@contextmanager
def guarded_region(pages: int, flags: int = PRIVATE_ANON, fd: int = -1) -> Iterator[int]:
    """``pages`` read-write pages between two PROT_NONE guard pages; yields the first."""
    total = (pages + 2) * PAGE
    addr = _libc.mmap(None, total, PROT_NONE, flags, fd, 0)
    if addr in (None, MAP_FAILED):
        raise _os_error("mmap")
    try:
        base = addr + PAGE
        mprotect(base, pages, RW)
        yield base
    finally:
        _libc.munmap(addr, total)


@contextmanager
def mapped_fd(fd: int, length: int) -> Iterator[int]:
    addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, MAP_FAILED):
        raise _os_error("mmap")
    try:
        yield addr
    finally:
        _libc.munmap(addr, length)


def touch(addr: int, pages: int) -> None:
    for page in range(pages):
        ctypes.memset(addr + page * PAGE, 0x5A, 1)


@contextmanager
def uffd_registered(addr: int, pages: int, mode: int) -> Iterator[None]:
    """Register [addr, addr + pages) with a fresh userfaultfd; closing it unregisters.
    Nothing touches the range meanwhile, so no fault ever waits for a handler."""
    if SYS_USERFAULTFD is None:
        pytest.skip(f"userfaultfd syscall number unknown on {platform.machine()}")
    fd = -1
    for flags in (os.O_CLOEXEC | os.O_NONBLOCK, os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY):
        fd = _libc.syscall(SYS_USERFAULTFD, flags)
        if fd >= 0:
            break
    if fd < 0:
        pytest.skip(f"userfaultfd unavailable: {os.strerror(ctypes.get_errno())}")
    try:
        fcntl.ioctl(fd, UFFDIO_API, bytearray(struct.pack("QQQ", 0xAA, 0, 0)), True)
        register = bytearray(struct.pack("QQQQ", addr, pages * PAGE, mode, 0))
        try:
            fcntl.ioctl(fd, UFFDIO_REGISTER, register, True)
        except OSError as exc:
            pytest.skip(f"UFFDIO_REGISTER mode {mode} refused: {exc}")
        yield
    finally:
        os.close(fd)


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


# ---------------------------------------------------------------------------- maps text

SHAPES = parse_maps(fixture_text("shapes.maps"))

# What each line of shapes.maps must give: start | end | pgoff (hex) | perms | dev | inode |
# "D" if the name reads as deleted | the name, exactly. "/tmp/really named (deleted)" is a
# file really called that: the text cannot be told apart from an unlinked file's. The
# "/mnt/big inode" line has a prefix longer than the padded column.
SHAPE_TABLE = """\
55e29a24e000|55e29a250000|0|r--p|fe:00|260386||/usr/bin/head
55e29b0d3000|55e29b0f4000|0|rw-p|00:00|0||[heap]
7f74e08a1000|7f74e0965000|0|rw-p|00:00|0||
7f74e0965000|7f74e0975000|0|rw-p|00:00|0||[anon:uffd test region]
7f74e0975000|7f74e0985000|0|rw-s|00:01|3083||[anon_shmem:shared name]
7f74e0985000|7f74e0995000|0|rw-s|00:01|3084|D|/memfd:uffd guest (deleted)
7f74e0a00000|7f74e0c00000|0|rw-s|00:10|39155|D|/anon_hugepage (deleted)
7f74e0c00000|7f74e0e00000|0|rw-s|00:10|39156|D|/memfd:hugetlb-backed (deleted)
7f74e0e00000|7f74e0e10000|0|rw-s|00:01|1027|D|/dev/zero (deleted)
7f74e0e10000|7f74e0e20000|0|rw-s|00:01|32769|D|/SYSV00000000 (deleted)
7f74e0e20000|7f74e0e21000|3000|r--s|fe:00|4123||/tmp/dir with  spaces/my file.bin
7f74e0e21000|7f74e0e22000|0|r--p|fe:00|4124||  two leading spaces
7f74e0e22000|7f74e0e23000|0|r--p|fe:00|4125|D|/tmp/really named (deleted)
7f74e0e23000|7f74e0e24000|123456789abcdef0|rw-p|103:02|18446744073709551615||/mnt/big inode
7ffc7007d000|7ffc7009e000|0|rw-p|00:00|0||[stack]
7ffc700f2000|7ffc700f6000|0|r--p|00:00|0||[vvar]
7ffc700f6000|7ffc700f8000|0|r-xp|00:00|0||[vdso]
ffffffffff600000|ffffffffff601000|0|--xp|00:00|0||[vsyscall]
"""
SHAPE_ROWS = [row.split("|", 7) for row in SHAPE_TABLE.splitlines()]


@pytest.mark.parametrize("line", range(len(SHAPE_ROWS)), ids=[row[7] for row in SHAPE_ROWS])
def test_every_maps_line_shape(line: int) -> None:
    start, end, pgoff, perms, dev, inode, deleted, path = SHAPE_ROWS[line]
    vma = SHAPES[line]
    assert vma == Vma(int(start, 16), int(end, 16), perms, int(pgoff, 16), dev, int(inode), path)
    assert vma.deleted is (deleted == "D")
    assert vma.path_without_deleted == (path[: -len(" (deleted)")] if deleted else path)


def test_fixture_has_one_record_per_line() -> None:
    assert len(SHAPES) == len(SHAPE_ROWS) == len(fixture_text("shapes.maps").splitlines())


def test_kernel_column_lines_parse_alike_with_and_without_the_odd_one() -> None:
    # Without the long-prefix line every name sits at the kernel's column.
    lines = fixture_text("shapes.maps").splitlines(keepends=True)
    regular = [line for line in lines if "/mnt/big inode" not in line]
    assert parse_maps("".join(regular)) == [v for v in SHAPES if v.path != "/mnt/big inode"]


def test_vma_properties() -> None:
    heap, memfd, vsyscall = SHAPES[1], SHAPES[5], SHAPES[17]
    assert heap.size == 0x21000 and heap.pages() == 0x21 and heap.pages(0x1000) == 0x21
    assert (heap.readable, heap.writable, heap.executable, heap.shared) == (
        True,
        True,
        False,
        False,
    )
    assert memfd.shared and not memfd.executable
    assert (vsyscall.readable, vsyscall.executable) == (False, True)
    assert heap.overlaps(heap.end - 1, heap.end + 5) and not heap.overlaps(heap.end, heap.end + 5)


def test_maps_text_in_other_spacing() -> None:
    # Hand-made text: single spaces before the name, no trailing space after inode 0.
    vmas = parse_maps(
        "00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/dbus-daemon\n"
        "00651000-00652000 rw-p 00051000 08:02 173521   /usr/bin/dbus  daemon\n"
        "00e03000-00e24000 rw-p 00000000 00:00 0"
    )
    assert [(v.start, v.pgoff, v.inode, v.path) for v in vmas] == [
        (0x400000, 0, 173521, "/usr/bin/dbus-daemon"),
        (0x651000, 0x51000, 173521, "/usr/bin/dbus  daemon"),
        (0xE03000, 0, 0, ""),
    ]


def test_maps_text_as_bytes_with_undecodable_name() -> None:
    line = b"7f0000000000-7f0000001000 r--p 00000000 fe:00 12 /tmp/caf\xe9\n"
    (vma,) = parse_maps(line)
    assert vma.path == "/tmp/caf\udce9"
    assert os.fsencode(vma.path) == b"/tmp/caf\xe9"


@pytest.mark.parametrize("text", ["not a maps line\n", "7f00-7f01 r--p\n", "x-y r--p 0 00:00 0\n"])
def test_malformed_maps_text_raises(text: str) -> None:
    with pytest.raises(ValueError):
        parse_maps(text)


def test_empty_text() -> None:
    assert parse_maps("") == [] and parse_smaps(b"") == []


# ---------------------------------------------------------------------------- smaps text


def test_smaps_current_kernel_fixture() -> None:
    head, anon, memfd, hugetlb, reserve, vsyscall = parse_smaps(fixture_text("current.smaps"))

    assert head.path == "/usr/bin/head" and head.vm_flags == {"rd", "mr", "mw", "me"}
    assert (head.rss, head.pss, head.shared_clean, head.referenced) == (
        8 * KB,
        4 * KB,
        8 * KB,
        8 * KB,
    )
    assert head.extra == {"Pss_Dirty": 0, "KSM": 0}
    assert head.thp_eligible == 0 and not head.uffd_registered

    assert anon.path == "" and anon.size == 80 * KB
    assert anon.vm_flags == {"rd", "wr", "mr", "mw", "me", "ac", "um", "uw"}
    assert (anon.uffd_missing, anon.uffd_wp, anon.uffd_minor, anon.uffd_registered) == (
        True,
        True,
        False,
        True,
    )
    assert anon.counters == SmapsCounters(
        kernel_page_size=4 * KB,
        mmu_page_size=4 * KB,
        rss=20 * KB,
        pss=20 * KB,
        private_dirty=20 * KB,
        referenced=20 * KB,
        anonymous=20 * KB,
        thp_eligible=1,
        extra_items=(("Pss_Dirty", 20 * KB), ("KSM", 0)),
    )

    assert memfd.deleted and memfd.path_without_deleted == "/memfd:uffd guest"
    assert memfd.uffd_minor and not memfd.uffd_missing and memfd.uffd_registered
    assert (memfd.shared_dirty, memfd.swap, memfd.swap_pss) == (12 * KB, 8 * KB, 8 * KB)

    assert hugetlb.kernel_page_size == hugetlb.mmu_page_size == 2 * 1024 * KB
    assert hugetlb.private_hugetlb == 2 * 1024 * KB and hugetlb.shared_hugetlb == 0
    assert "ht" in hugetlb.vm_flags

    # Values wider than the kernel's 8-column field.
    assert reserve.size == 2**40 and reserve.path == "[anon:reserve]" and reserve.rss == 0

    assert vsyscall.vm_flags == {"ex"} and vsyscall.start == 0xFFFFFFFFFF600000


def test_smaps_text_without_final_newline_or_as_bytes() -> None:
    text = fixture_text("current.smaps")
    assert parse_smaps(text.rstrip("\n")) == parse_smaps(text.encode()) == parse_smaps(text)


def test_smaps_protection_key_goes_to_extra() -> None:
    keyed, plain = parse_smaps(fixture_text("pkeys.smaps"))
    assert keyed.extra == {"Pss_Dirty": 0, "KSM": 0, "ProtectionKey": 3}
    assert plain.extra["ProtectionKey"] == 0
    assert keyed.locked == 16 * KB and keyed.path == "[anon:with key]"


def test_smaps_older_key_order_and_missing_keys() -> None:
    text, heap = parse_smaps(fixture_text("linux-4.9.smaps"))
    assert text.path == "/usr/bin/dbus-daemon" and text.start == 0x400000
    assert (text.rss, text.pss, text.kernel_page_size, text.mmu_page_size) == (
        300 * KB,
        150 * KB,
        4 * KB,
        4 * KB,
    )
    assert text.thp_eligible is None and text.lazyfree == 0 and text.extra == {}
    assert "dw" in text.vm_flags
    assert heap.anonymous == heap.private_dirty == 132 * KB and heap.path == "[heap]"


def test_smaps_without_vmflags_from_a_32_bit_kernel() -> None:
    # Kernels before 3.8 print no VmFlags; a 32-bit kernel pads names to column 49.
    cat, heap = parse_smaps(fixture_text("linux-3.2.smaps"))
    assert cat.path == "/bin/cat" and heap.path == "[heap]"
    assert cat.vm_flags == frozenset() and not cat.uffd_registered
    assert cat.rss == 56 * KB and heap.anonymous == 4 * KB and heap.size == 0x21000


def test_smaps_blocks_of_different_shapes() -> None:
    current = fixture_text("current.smaps")
    pkeys = fixture_text("pkeys.smaps")
    old = fixture_text("linux-4.9.smaps")
    mixed = parse_smaps(old + current + pkeys)
    assert mixed == parse_smaps(old) + parse_smaps(current) + parse_smaps(pkeys)


def test_smaps_identical_blocks_share_counters() -> None:
    text = fixture_text("current.smaps")
    first_block = text[: text.index("\n7f74e0965000")] + "\n"
    again = first_block.replace("55e29a24e000-55e29a250000", "55e29a250000-55e29a252000")
    one, two = parse_smaps(first_block + again)
    assert one.counters is two.counters and one.start != two.start


def test_smaps_unknown_text_line_is_skipped() -> None:
    text = fixture_text("pkeys.smaps")
    with_names = text.replace("VmFlags:", "Name:           [anon:vendor]\nVmFlags:")
    assert parse_smaps(with_names) == parse_smaps(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Rss: 4 kB\n", "line 1"),
        ("7f0000000000-7f0000001000 r--p 00000000 00:00 0 \nRss: four kB\n", "line 2"),
        ("7f0000000000-7f0000001000 r--p 00000000 00:00 0 \nRss 4 kB\n", "line 2"),
        ("7f0000000000-7f0000001000 r--p 00000000 00:00 0 \nRss: 4 MB\n", "line 2"),
    ],
)
def test_malformed_smaps_text_names_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_smaps(text)


# ---------------------------------------------------------------------------- records


def test_records_are_frozen_hashable_and_picklable() -> None:
    vma = SHAPES[3]
    smaps = parse_smaps(fixture_text("current.smaps"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        vma.start = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        smaps[1].vm_flags = frozenset()  # type: ignore[misc]
    assert len({vma, *smaps, *smaps}) == 1 + len(smaps)
    assert pickle.loads(pickle.dumps(smaps)) == smaps
    assert dataclasses.replace(vma, end=vma.end + PAGE).size == vma.size + PAGE
    assert SmapsVma(1, 2, "r--p", 0, "00:00", 0, "") != Vma(1, 2, "r--p", 0, "00:00", 0, "")


# ---------------------------------------------------------------------------- queries


def _vma(start_page: int, end_page: int, perms: str = "rw-p") -> Vma:
    return Vma(start_page * PAGE, end_page * PAGE, perms, 0, "00:00", 0, "")


def _smaps_vma(start_page: int, end_page: int, flags: str = "", rss_pages: int = 0) -> SmapsVma:
    return SmapsVma(
        start_page * PAGE,
        end_page * PAGE,
        "rw-p",
        0,
        "00:00",
        0,
        "",
        vm_flags=frozenset(flags.split()),
        counters=SmapsCounters(rss=rss_pages * PAGE),
    )


def test_overlapping_is_half_open() -> None:
    vmas = [_vma(0, 4), _vma(4, 8), _vma(10, 12), _vma(12, 20)]
    assert overlapping(vmas, 4 * PAGE, 10 * PAGE) == [vmas[1]]
    assert overlapping(vmas, 3 * PAGE, 11 * PAGE) == vmas[:3]
    assert overlapping(vmas, 8 * PAGE, 10 * PAGE) == []
    assert overlapping(vmas, 19 * PAGE, 30 * PAGE) == [vmas[3]]
    assert overlapping([], 0, PAGE) == []


def test_layout_clips_to_the_range_and_skips_holes() -> None:
    vmas = [_smaps_vma(0, 5, "rd wr um"), _smaps_vma(5, 8, "rd wr"), _smaps_vma(10, 30, "ui uw")]
    base = 2 * PAGE
    assert layout(vmas, base, 18 * PAGE) == [(0, 3, {"um"}), (3, 6, set()), (8, 18, {"uw", "ui"})]
    assert layout(vmas, base, 18 * PAGE, flags=("uw",)) == [
        (0, 3, set()),
        (3, 6, set()),
        (8, 18, {"uw"}),
    ]
    assert layout(vmas, base) == [(0, 3, {"um"}), (3, 6, set()), (8, 28, {"uw", "ui"})]
    assert layout([_vma(0, 4)], 0, 4 * PAGE) == [(0, 4, set())]
    with pytest.raises(ValueError, match="aligned"):
        layout(vmas, base + 1, PAGE)


def test_covers_single_vma() -> None:
    vmas = [_vma(0, 4), _vma(4, 8), _vma(10, 12)]
    assert covers_single_vma(vmas, 0, 4 * PAGE)
    assert covers_single_vma(vmas, PAGE, 2 * PAGE)
    assert not covers_single_vma(vmas, 0, 5 * PAGE)
    assert not covers_single_vma(vmas, 9 * PAGE, 11 * PAGE)
    assert not covers_single_vma(vmas, 8 * PAGE, 10 * PAGE)


def test_diff_reports_split_and_changed_counters() -> None:
    before = [_smaps_vma(0, 20), _smaps_vma(30, 32, "um", rss_pages=0)]
    after = [
        _smaps_vma(0, 5, "um"),
        _smaps_vma(5, 20),
        _smaps_vma(30, 32, "um uw", rss_pages=2),
    ]
    change = diff(before, after)
    assert change.removed == (before[0],)
    assert change.added == (after[0], after[1])
    assert [(c.before, c.after) for c in change.changed] == [(before[1], after[2])]
    assert change.changed[0].fields == ("vm_flags", "rss")
    assert change and change.layout_changed
    unchanged = diff(after, list(after))
    assert not unchanged and not unchanged.layout_changed


# ---------------------------------------------------------------------------- live process


def test_mprotect_splits_a_guarded_region_into_three_vmas() -> None:
    with guarded_region(20) as base:
        end = base + 20 * PAGE
        whole = snapshot(base, 20 * PAGE)
        assert layout(whole, base, 20 * PAGE) == [(0, 20, set())]
        assert is_single_vma(base, end)

        mprotect(base + 5 * PAGE, 5, mmap.PROT_READ)
        pieces = snapshot(base, 20 * PAGE)
        assert layout(pieces, base, 20 * PAGE) == [(0, 5, set()), (5, 10, set()), (10, 20, set())]
        assert [vma.perms for vma in pieces] == ["rw-p", "r--p", "rw-p"]
        assert [vma.vm_flags >= {"rd", "wr"} for vma in pieces] == [True, False, True]
        assert not is_single_vma(base, end) and is_single_vma(base + 5 * PAGE, base + 10 * PAGE)

        split = diff(whole, pieces)
        assert split.removed == tuple(whole) and split.added == tuple(pieces)
        assert split.layout_changed and split.changed == ()


def test_guard_pages_are_their_own_vmas() -> None:
    with guarded_region(4) as base:
        assert snapshot(base - PAGE, PAGE)[0].perms == "---p"
        around = read_maps_range(base - PAGE, base + 5 * PAGE)
        assert [(v.start, v.end, v.perms) for v in around if v.start >= base - PAGE] == [
            (base - PAGE, base, "---p"),
            (base, base + 4 * PAGE, "rw-p"),
            (base + 4 * PAGE, base + 5 * PAGE, "---p"),
        ]


def test_rss_grows_after_touching_pages() -> None:
    with guarded_region(20) as base:
        (before,) = snapshot(base, 20 * PAGE)
        assert before.rss == 0 and before.anonymous == 0
        touch(base + 2 * PAGE, 3)
        (after,) = snapshot(base, 20 * PAGE)
        assert after.rss == after.anonymous == after.private_dirty == 3 * PAGE
        change = diff([before], [after])
        assert not change.layout_changed
        assert {"rss", "anonymous", "private_dirty"} <= set(change.changed[0].fields)


def test_uffd_registration_shows_in_vm_flags() -> None:
    with guarded_region(20) as base:
        with uffd_registered(base, 5, UFFDIO_REGISTER_MODE_MISSING):
            registered = snapshot(base, 20 * PAGE)
            assert layout(registered, base, 20 * PAGE) == [(0, 5, {"um"}), (5, 20, set())]
            assert registered[0].uffd_missing and registered[0].uffd_registered
            assert not registered[1].uffd_registered


def test_uffd_wp_registration_shows_in_vm_flags() -> None:
    with guarded_region(8) as base:
        mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP
        with uffd_registered(base + 4 * PAGE, 4, mode):
            vmas = snapshot(base, 8 * PAGE)
            assert layout(vmas, base, 8 * PAGE) == [(0, 4, set()), (4, 8, {"um", "uw"})]
            assert vmas[1].uffd_wp and not vmas[1].uffd_minor


def test_memfd_mapping_is_a_deleted_file() -> None:
    fd = os.memfd_create("uffdharness maps", 0)
    try:
        os.ftruncate(fd, 2 * PAGE)
        with mapped_fd(fd, 2 * PAGE) as addr:
            (vma,) = read_maps_range(addr, addr + 2 * PAGE)
            assert vma.path == "/memfd:uffdharness maps (deleted)"
            assert vma.deleted and vma.path_without_deleted == "/memfd:uffdharness maps"
            assert vma.shared and vma.inode == os.fstat(fd).st_ino
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["file with  two spaces.bin", "  leading", "named (deleted)"])
def test_file_mapping_keeps_the_exact_path(tmp_path: Path, name: str) -> None:
    directory = tmp_path / "dir with spaces"
    directory.mkdir()
    path = directory / name
    path.write_bytes(b"x" * PAGE)
    fd = os.open(path, os.O_RDONLY)
    try:
        with mapped_fd(fd, PAGE) as addr:
            (vma,) = read_smaps_range(addr, addr + PAGE)
            assert vma.path == str(path)
            assert vma.inode == os.fstat(fd).st_ino and vma.pgoff == 0
            assert vma.deleted is name.endswith(" (deleted)")
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(PRIVATE_ANON, "[anon:uffd-maps]"), (SHARED_ANON, "[anon_shmem:uffd-maps]")],
)
def test_prctl_anon_name(flags: int, expected: str) -> None:
    with guarded_region(4, flags) as base:
        name = ctypes.create_string_buffer(b"uffd-maps")
        result = _libc.prctl(
            PR_SET_VMA, PR_SET_VMA_ANON_NAME, base, 4 * PAGE, ctypes.addressof(name)
        )
        if result != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                pytest.skip("PR_SET_VMA_ANON_NAME: EINVAL (kernel without CONFIG_ANON_VMA_NAME)")
            raise _os_error("prctl")
        (vma,) = snapshot(base, 4 * PAGE)
        assert vma.path == expected


def test_range_reads_match_whole_reads() -> None:
    with guarded_region(6) as base:
        mprotect(base + 2 * PAGE, 2, mmap.PROT_READ)
        start, end = base - PAGE, base + 7 * PAGE
        assert read_smaps_range(start, end) == overlapping(read_smaps(), start, end)
        assert read_maps_range(start, end) == overlapping(read_maps(os.getpid()), start, end)
        assert len(read_maps_range(start, end)) == 5


def _bytes_read_by(call: Callable[[], object]) -> int:
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("/proc/self/io missing (kernel without CONFIG_TASK_IO_ACCOUNTING)")

    def rchar() -> int:
        return int(io.read_text().split("rchar:")[1].split()[0])

    before = rchar()
    call()
    return rchar() - before


def test_range_reads_stop_after_the_range() -> None:
    # 3000 one-page VMAs make smaps ~2 MB, which the kernel hands out a page at a time.
    with guarded_region(3000) as base:
        for page in range(0, 3000, 2):
            mprotect(base + page * PAGE, 1, mmap.PROT_READ)
        start, end = base + 1499 * PAGE, base + 1502 * PAGE
        ranged = read_smaps_range(start, end)
        assert [(v.start - base) // PAGE for v in ranged] == [1499, 1500, 1501]
        assert ranged == overlapping(read_smaps(), start, end)
        assert read_maps_range(start, end) == overlapping(read_maps(), start, end)
        assert not is_single_vma(start, end) and is_single_vma(start, start + PAGE)

        lowest = read_maps()[0]
        whole = _bytes_read_by(read_smaps)
        assert whole > 2_000_000
        assert _bytes_read_by(lambda: read_smaps_range(lowest.start, lowest.end)) < whole // 20
        assert _bytes_read_by(lambda: read_smaps_range(start, end)) < whole * 3 // 4


def test_live_text_parses_the_same_through_every_path() -> None:
    # An extra line in one block only, or one name moved off the kernel's column, sends the
    # whole text through the line-by-line parsers; the records must not change.
    with guarded_region(4) as base:
        mprotect(base, 1, mmap.PROT_READ)
        smaps_text = Path("/proc/self/smaps").read_bytes()
        maps_text = Path("/proc/self/maps").read_bytes()
    fast = parse_smaps(smaps_text)
    slow = parse_smaps(smaps_text.replace(b"\nVmFlags:", b"\nNewCounter:   7 kB\nVmFlags:", 1))
    assert slow[0].extra_items == fast[0].extra_items + (("NewCounter", 7 * KB),)
    assert slow[1:] == fast[1:] and len(fast) > 10

    named_at = maps_text.index(b"                     /")
    respaced = maps_text[:named_at] + b" " + maps_text[named_at:].lstrip(b" ")
    assert parse_maps(respaced) == parse_maps(maps_text)
    assert [(v.start, v.end, v.path) for v in fast] == [
        (v.start, v.end, v.path) for v in parse_maps(maps_text)
    ]


def test_unmapped_range_is_empty() -> None:
    with guarded_region(4) as base:
        pass
    assert snapshot(base, 4 * PAGE) == [] and read_maps_range(base, base + PAGE) == []


def test_other_pid_and_missing_pid() -> None:
    own = read_maps(os.getpid())
    assert any(vma.path == "[stack]" for vma in own)
    with pytest.raises(FileNotFoundError):
        read_smaps(2**22 + 12345)
