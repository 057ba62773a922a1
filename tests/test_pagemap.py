"""/proc/self/pagemap entries and the PAGEMAP_SCAN ioctl against the running kernel."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import open_fds

from uffdharness import pagemap
from uffdharness.abi import Feature, PageCategory, RegisterMode, ScanFlag, WriteProtectMode
from uffdharness.errors import UffdError
from uffdharness.memory import PAGE_SIZE, hugetlb_page_size
from uffdharness.pagemap import Pagemap, PagemapEntry, PagemapFlag

HUGE_PAGE_SIZE = hugetlb_page_size()

WP_FEATURES = Feature.PAGEFAULT_FLAG_WP | Feature.WP_HUGETLBFS_SHMEM


def test_entry_fields_decode_the_documented_bits():
    raw = (1 << 63) | (1 << 61) | (1 << 57) | (1 << 56) | (1 << 55) | 0x1234
    entry = PagemapEntry(0x1000, raw)
    assert entry.present and entry.file_shared and entry.uffd_wp and entry.exclusive
    assert entry.soft_dirty and not entry.swapped
    assert entry.pfn == 0x1234
    assert entry.names() == ["SOFT_DIRTY", "EXCLUSIVE", "UFFD_WP", "FILE_SHARED", "PRESENT"]
    assert PagemapEntry(0, 1 << 62).swapped


def test_untouched_then_written_anon(region_factory):
    region = region_factory("anon", 4)
    assert [e.raw for e in pagemap.read_entries(region.addr, region.length)] == [0] * 4
    region.touch([1, 2], write=True)
    entries = pagemap.read_entries(region.addr, region.length)
    assert [e.present for e in entries] == [False, True, True, False]
    assert [e.address for e in entries] == [region.page_addr(i) for i in range(4)]
    assert entries[1].exclusive and not entries[1].file_shared
    if os.geteuid() == 0:  # PFNs are zeroed for readers without CAP_SYS_ADMIN
        assert entries[1].pfn and entries[1].pfn != entries[2].pfn


def test_shmem_pages_are_file_shared(region_factory):
    region = region_factory("shmem", 2)
    region.touch(0, write=True)
    first, second = pagemap.read_entries(region.addr, region.length)
    assert first.present and first.file_shared
    assert not second.present


def test_reading_a_registered_unpopulated_range_does_not_fault(region_factory, uffd):
    region = region_factory("anon", 3)
    uffd.register(region)  # any access would block in a missing fault with nobody to serve it
    assert [e.raw for e in pagemap.read_entries(region.addr, region.length)] == [0, 0, 0]


@pytest.mark.parametrize("kind", ["anon", "shmem", "hugetlb"])
def test_uffd_wp_bit_follows_writeprotect(kind, region_factory, uffd_factory):
    region = region_factory(kind, 3)
    region.fill(b"p")
    uffd = uffd_factory(WP_FEATURES)
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(*region.span(0, 2))
    mask = pagemap.uffd_wp_mask(region.addr, region.length, region.page_size)
    assert mask == 0b011
    uffd.writeprotect(*region.span(1), mode=WriteProtectMode(0))
    assert pagemap.uffd_wp_mask(region.addr, region.length, region.page_size) == 0b001


def test_hugetlb_one_entry_per_huge_page_same_flags_in_every_base_entry(region_factory):
    region = region_factory("hugetlb", 2)
    region.touch(0, write=True)
    huge = pagemap.read_entries(region.addr, region.length, HUGE_PAGE_SIZE)
    assert [e.present for e in huge] == [True, False]
    with Pagemap() as pm:
        base = pm.raw(region.addr, HUGE_PAGE_SIZE)
    assert len(base) == HUGE_PAGE_SIZE // PAGE_SIZE
    flags = {value & ~pagemap.PFN_MASK for value in base}
    assert flags == {huge[0].raw & ~pagemap.PFN_MASK}


def test_flag_mask_and_alignment_errors(region_factory):
    region = region_factory("anon", 3)
    region.touch(2, write=True)
    with Pagemap() as pm:
        assert pm.flag_mask(PagemapFlag.PRESENT, region.addr, region.length) == 0b100
        with pytest.raises(ValueError):
            pm.raw(region.addr + 1, PAGE_SIZE)
        with pytest.raises(ValueError):
            pm.entries(region.addr, region.length, 3 * 1000)


def test_pagemap_owns_its_fd():
    before = open_fds()
    pm = Pagemap()
    assert pm.path == "/proc/self/pagemap" and not pm.closed
    pm.close()
    pm.close()
    assert pm.closed and open_fds() == before
    with pytest.raises(ValueError):
        pm.fileno()
    with Pagemap():
        pass
    assert open_fds() == before


# --- PAGEMAP_SCAN -------------------------------------------------------------------------------

needs_scan = pytest.mark.requires_kernel(">=6.7")


@needs_scan
def test_scan_supported_here():
    assert pagemap.scan_supported()


@needs_scan
def test_scan_reports_present_pages_as_coalesced_regions(region_factory):
    region = region_factory("anon", 6)
    region.touch([1, 2, 4], write=True)
    result = pagemap.scan(
        region.addr,
        region.end,
        category_mask=PageCategory.PRESENT,
        return_mask=PageCategory.PRESENT,
    )
    assert result.complete and result.walk_end == region.end
    spans = [(r.start - region.addr, r.end - region.addr) for r in result.regions]
    assert spans == [(PAGE_SIZE, 3 * PAGE_SIZE), (4 * PAGE_SIZE, 5 * PAGE_SIZE)]
    assert all(r.categories == PageCategory.PRESENT for r in result.regions)
    assert result.pages() == 3
    assert result.page_addresses() == [region.page_addr(i) for i in (1, 2, 4)]
    assert result.regions[0].pages() == 2 and result.regions[0].length == 2 * PAGE_SIZE


@needs_scan
def test_scan_inverted_category_finds_holes(region_factory):
    region = region_factory("anon", 4)
    region.touch([0, 3], write=True)
    result = pagemap.scan(
        region.addr,
        region.end,
        category_mask=PageCategory.PRESENT,
        category_inverted=PageCategory.PRESENT,
        return_mask=PageCategory.PRESENT,
    )
    assert result.page_addresses() == [region.page_addr(1), region.page_addr(2)]
    assert result.regions[0].categories == PageCategory(0)


@needs_scan
def test_scan_stops_early_and_says_where(region_factory):
    region = region_factory("anon", 6)
    region.touch([0, 2, 4], write=True)
    kwargs = {"category_mask": PageCategory.PRESENT, "return_mask": PageCategory.PRESENT}
    with Pagemap() as pm:
        by_regions = pm.scan(region.addr, region.end, max_regions=1, **kwargs)
        by_pages = pm.scan(region.addr, region.end, max_pages=2, **kwargs)
    assert len(by_regions.regions) == 1 and not by_regions.complete
    assert region.addr < by_regions.walk_end < region.end
    assert by_pages.pages() == 2 and not by_pages.complete
    assert by_pages.page_addresses() == [region.page_addr(0), region.page_addr(2)]


@needs_scan
@pytest.mark.requires_feature("WP_ASYNC", "WP_UNPOPULATED", "PAGEFAULT_FLAG_WP")
def test_scan_wp_matching_reports_written_pages_and_reprotects(region_factory, uffd_factory):
    region = region_factory("anon", 5)
    uffd = uffd_factory(Feature.PAGEFAULT_FLAG_WP | Feature.WP_ASYNC | Feature.WP_UNPOPULATED)
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    region.touch([0, 3], write=True)  # WP_ASYNC: resolved by the kernel, never blocks
    kwargs = {
        "flags": ScanFlag.WP_MATCHING | ScanFlag.CHECK_WPASYNC,
        "category_mask": PageCategory.WRITTEN,
        "return_mask": PageCategory.WRITTEN,
    }
    first = pagemap.scan(region.addr, region.end, **kwargs)
    assert first.page_addresses() == [region.page_addr(0), region.page_addr(3)]
    assert pagemap.uffd_wp_mask(region.addr, region.length) == 0b11111
    assert pagemap.scan(region.addr, region.end, **kwargs).regions == ()


@needs_scan
def test_scan_check_wpasync_refuses_a_sync_wp_range(region_factory, uffd_factory):
    region = region_factory("anon", 2)
    uffd = uffd_factory(Feature.PAGEFAULT_FLAG_WP)
    uffd.register(region, mode=RegisterMode.WP)
    with pytest.raises(UffdError) as raised:
        pagemap.scan(
            region.addr,
            region.end,
            flags=ScanFlag.WP_MATCHING | ScanFlag.CHECK_WPASYNC,
            category_mask=PageCategory.WRITTEN,
            return_mask=PageCategory.WRITTEN,
        )
    assert raised.value.errno_name == "EPERM"
    assert "WP_ASYNC" in str(raised.value)


@needs_scan
def test_scan_invalid_arguments_raise_einval_with_the_range(region_factory):
    region = region_factory("anon", 2)
    with pytest.raises(UffdError) as unaligned:
        pagemap.scan(region.addr + 1, region.end)
    assert unaligned.value.errno_name == "EINVAL" and unaligned.value.op == "PAGEMAP_SCAN"
    assert "6.7" in str(unaligned.value)
    with pytest.raises(UffdError) as unknown_category:
        pagemap.scan(region.addr, region.end, return_mask=PageCategory(1 << 40))
    assert unknown_category.value.errno == errno.EINVAL


def test_scan_on_a_file_without_the_ioctl_names_the_kernel_version():
    """What a pre-6.7 kernel answers (ENOTTY), reproduced with an fd that has no ioctl."""
    with Pagemap() as pm:
        null = os.open("/dev/null", os.O_RDONLY)
        try:
            os.dup2(null, pm.fileno())
        finally:
            os.close(null)
        with pytest.raises(UffdError) as raised:
            pm.scan(0, PAGE_SIZE)
    assert raised.value.errno_name == "ENOTTY"
    assert "added in Linux 6.7" in str(raised.value)
