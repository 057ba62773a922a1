"""Regions of every kind: placement, page helpers, GIL-free access, mapping operations."""

from __future__ import annotations

import threading

import pytest
from conftest import ALL_KINDS, open_fds

from uffdharness import maps
from uffdharness import syscalls as sc
from uffdharness.errors import UffdError
from uffdharness.memory import PAGE_SIZE, MemoryKind, allocate


def vmas_around(region, pages_each_side: int = 1):
    pad = pages_each_side * PAGE_SIZE
    return maps.read_maps_range(region.addr - pad, region.end + pad)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_each_kind_maps_and_sits_between_guards(kind, region_factory):
    region = region_factory(kind, 3)
    assert region.length == 3 * MemoryKind(kind).page_size
    assert region.addr % region.page_size == 0
    around = vmas_around(region)
    assert [v.perms[:3] for v in around] == ["---", "rw-", "---"]
    middle = around[1]
    assert (middle.start, middle.end) == (region.addr, region.end)
    shared = kind not in ("anon", "memfd-private", "hugetlb-private")
    assert middle.perms[3] == ("s" if shared else "p")
    if kind in ("memfd", "memfd-private", "hugetlb", "hugetlb-private"):
        assert middle.path.startswith("/memfd:uffdharness")


def test_without_guard_no_reservation(region_factory):
    region = region_factory("anon", 2, guard=False)
    assert maps.is_single_vma(region.addr, region.end)


def test_page_helpers(region_factory):
    region = region_factory("anon", 10)
    assert region.pages == 10
    assert region.page_addr(3) == region.addr + 3 * PAGE_SIZE
    assert region.page_addr(-1) == region.addr + 9 * PAGE_SIZE
    assert region.page_index(region.addr + 5 * PAGE_SIZE + 17) == 5
    assert region.span(2, 3) == (region.addr + 2 * PAGE_SIZE, 3 * PAGE_SIZE)
    with pytest.raises(IndexError):
        region.page_addr(10)
    with pytest.raises(IndexError):
        region.page_index(region.end)
    with pytest.raises(IndexError):
        region.span(8, 3)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_access_helpers(kind, region_factory):
    region = region_factory(kind, 2)
    region.fill(b"abc")
    assert region.verify(b"abc")
    region.write(b"XYZ", offset=10)
    assert region.find_mismatch(b"abc") == 10
    assert region.read(9, 5) == b"aXYZb"
    assert region.touch() == 2
    assert region.touch([1], write=True) == 1
    assert region.read(10, 3) == b"XYZ"  # a write touch leaves the data alone
    region.fill_indexed(seed=99)
    assert region.find_indexed_mismatch(seed=99) is None
    assert region.find_indexed_mismatch(seed=98) == 0
    region.write(b"\xff", offset=region.page_size + 8)
    assert region.find_indexed_mismatch(seed=99) == region.page_size + 8


def test_access_outside_region_is_refused(region_factory):
    region = region_factory("anon", 1)
    with pytest.raises(ValueError):
        region.read(PAGE_SIZE - 1, 2)
    with pytest.raises(ValueError):
        region.write(b"xx", offset=PAGE_SIZE - 1)
    with pytest.raises(IndexError):
        region.touch([1])


def test_access_helpers_release_the_gil(region_factory):
    """While one thread spins in a C touch of 4096 pages, a Python thread keeps running."""
    region = region_factory("anon", 4096)
    progress = []
    done = threading.Event()

    def python_loop():
        while not done.is_set():
            progress.append(1)

    spinner = threading.Thread(target=python_loop)
    spinner.start()
    try:
        for _ in range(20):
            region.touch(write=True)
    finally:
        done.set()
        spinner.join()
    assert progress


def test_memfd_alias_sees_writes_and_pread(region_factory):
    region = region_factory("memfd", 2)
    alias = region.alias()
    region.write(b"shared", offset=PAGE_SIZE)
    assert alias.read(PAGE_SIZE, 6) == b"shared"
    assert region.pread(6, PAGE_SIZE) == b"shared"
    region.pwrite(b"via-fd", 0)
    assert alias.read(0, 6) == b"via-fd"


def test_hugetlb_alias_and_private_cow(region_factory):
    shared = region_factory("hugetlb", 1)
    alias = shared.alias()
    shared.write(b"huge")
    assert alias.read(0, 4) == b"huge"
    private = shared.alias(shared=False)
    private.write(b"priv")
    assert shared.read(0, 4) == b"huge" and private.read(0, 4) == b"priv"


def test_punch_hole_drops_page_cache(region_factory):
    region = region_factory("memfd", 2)
    region.fill(b"z")
    region.punch_hole(0, PAGE_SIZE)
    assert region.read(0, 1) == b"\0" and region.read(PAGE_SIZE, 1) == b"z"


def test_punch_hole_needs_a_backing_file(region_factory):
    region = region_factory("anon", 1)
    with pytest.raises(Exception, match="no backing file"):
        region.punch_hole()


def test_madvise_dontneed_zeroes_anon(region_factory):
    region = region_factory("anon", 2)
    region.fill(b"q")
    region.madvise(sc.MADV_DONTNEED)
    assert region.verify(b"\0")


def test_mprotect_splits_vma(region_factory):
    region = region_factory("anon", 4)
    region.mprotect(sc.PROT_READ, PAGE_SIZE, PAGE_SIZE)
    layout = maps.layout(maps.read_maps_range(region.addr, region.end), region.addr, region.length)
    assert [(start, end) for start, end, _ in layout] == [(0, 1), (1, 2), (2, 4)]
    with pytest.raises(UffdError) as info:
        region.mprotect(0x1000)  # unknown PROT bit
    assert info.value.errno_name == "EINVAL"


def test_mremap_maymove_fixed_keeps_data(region_factory):
    region = region_factory("anon", 4)
    region.fill_indexed(seed=5)
    target = sc.mmap(0, 8 * PAGE_SIZE, sc.PROT_NONE, sc.MAP_PRIVATE | sc.MAP_ANONYMOUS)
    try:
        moved = region.mremap(
            region.length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, target + PAGE_SIZE
        )
        assert moved == target + PAGE_SIZE == region.addr
        assert region.find_indexed_mismatch(seed=5) is None
    finally:
        region.close()
        sc.munmap(target, 8 * PAGE_SIZE)


def test_mremap_dontunmap_leaves_old_range_empty(region_factory):
    region = region_factory("anon", 2)
    region.fill(b"d")
    old = region.addr
    region.mremap(region.length, sc.MREMAP_MAYMOVE | sc.MREMAP_DONTUNMAP)
    assert region.addr != old and region.verify(b"d")
    assert maps.read_maps_range(old, old + 2 * PAGE_SIZE)  # still mapped
    region.close()
    assert not maps.read_maps_range(old, old + 2 * PAGE_SIZE)


def test_mremap_grow_in_place_fails_without_maymove(region_factory):
    region = region_factory("anon", 2)  # followed by a guard: cannot grow in place
    with pytest.raises(UffdError) as info:
        region.mremap(4 * PAGE_SIZE, 0)
    assert info.value.errno_name == "ENOMEM"


def test_file_region_with_space_in_path(tmp_path):
    path = tmp_path / "a file with spaces"
    with allocate("file", 2, path=str(path)) as region:
        region.write(b"file")
        vma = maps.read_maps_range(region.addr, region.end)[0]
        assert vma.path == str(path)
    assert path.read_bytes()[:4] == b"file"


def test_close_unmaps_everything_and_frees_fds():
    fds = open_fds()
    region = allocate("memfd", 4)
    alias = region.alias()
    addr, alias_addr = region.addr, alias.addr
    region.close()
    region.close()
    assert not maps.read_maps_range(addr - PAGE_SIZE, addr + 5 * PAGE_SIZE)
    assert not maps.read_maps_range(alias_addr, alias_addr + PAGE_SIZE)
    assert open_fds() == fds


def test_bad_length_refused():
    with pytest.raises(ValueError):
        allocate("anon", length=100)
    with pytest.raises(ValueError):
        allocate("hugetlb", length=PAGE_SIZE)


def test_hugetlb_without_free_pages_says_so():
    from uffdharness import hugepages

    too_many = hugepages.free_pages() + 1
    with pytest.raises(UffdError) as info:
        allocate("hugetlb", too_many)
    assert info.value.errno_name == "ENOMEM"
    assert "HugepagePool" in str(info.value)


def test_close_after_mremap_never_unmaps_what_took_the_vacated_range():
    """A region moved out of its reservation leaves a hole: it is held with PROT_NONE, and
    whatever got there first (Python's allocator, a thread stack) survives close()."""
    from uffdharness.memory import Reservation

    with Reservation(8 * PAGE_SIZE) as parking:
        region = allocate("anon", 4)
        old, length = region.addr, region.length
        region.mremap(length, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, parking.start)
        assert [v.perms[:3] for v in maps.read_maps_range(old, old + length)] == ["---"]
        # the race _hold loses: another mapping took part of the hole before it
        sc.munmap(old, length)
        flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED_NOREPLACE
        foreign = sc.mmap(old, PAGE_SIZE, sc.PROT_RW, flags)
        region._hold(old, length)
        region.close()
        assert [v.start for v in maps.read_maps_range(foreign, foreign + PAGE_SIZE)] == [foreign]
        sc.munmap(foreign, PAGE_SIZE)


def test_reservation_close_keeps_out_a_hole_another_mapping_took():
    """A test that punched a hole in its reservation closes it around the hole: whatever
    landed there (here a stand-in for the Python heap) stays mapped."""
    from uffdharness.memory import Reservation

    page = PAGE_SIZE
    reservation = Reservation(8 * page)
    hole = reservation.start + 2 * page
    sc.munmap(hole, 2 * page)
    flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED_NOREPLACE
    foreign = sc.mmap(hole, 2 * page, sc.PROT_RW, flags)
    try:
        reservation.close(keep_out=[(hole, 2 * page)])
        base, length = reservation.span
        with open("/proc/self/maps") as lines:
            spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in lines]
        inside = [(start, end) for start, end in spans if start < base + length and end > base]
        assert inside == [(foreign, foreign + 2 * page)]
    finally:
        sc.munmap(foreign, 2 * page)


def test_churn_arena_layout_and_close_around_lost_slots():
    """Slots lie in order, the parking slots past a guard gap as long as the longest churn
    slot; close() leaves what another mapping put in a lost churn slot's parking, and
    unmaps everything else."""
    from uffdharness.memory import ChurnArena

    page = PAGE_SIZE
    arena = ChurnArena([page, 4 * page, 2 * page], churn=[0, 2])
    assert [arena.slot(i) - arena.slot(0) for i in range(3)] == [0, page, 5 * page]
    assert (arena.churn(0), arena.churn(1)) == (arena.slot(0), arena.slot(2))
    assert arena.parking(0) - arena.slot(0) == 7 * page + 2 * page  # after the gap
    assert arena.parking(1) - arena.parking(0) == page
    flags = sc.MAP_PRIVATE | sc.MAP_ANONYMOUS | sc.MAP_FIXED
    foreign = sc.mmap(arena.parking(1), 2 * page, sc.PROT_RW, flags)  # took the hole
    arena.lost.add(1)
    try:
        base, length = arena.span
        arena.close()
        with open("/proc/self/maps") as lines:
            spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in lines]
        inside = [(start, end) for start, end in spans if start < base + length and end > base]
        # the lost slot itself was kept out as well, so it is still reserved (PROT_NONE)
        assert (foreign, foreign + 2 * page) in inside
        assert all(start >= arena.churn(1) for start, _ in inside), inside
    finally:
        sc.munmap(foreign, 2 * page)
        sc.munmap(arena.churn(1), 2 * page)
