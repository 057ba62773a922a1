"""The memory-kind table: one row per kind, and every kind behaves as its row says."""

from __future__ import annotations

import pytest

from uffdharness import maps
from uffdharness.abi import Feature, RegisterMode
from uffdharness.kernelversion import parse
from uffdharness.memory import (
    CATALOGUE_KINDS,
    KIND_TABLE,
    PAGE_SIZE,
    SPECS,
    MemoryKind,
    Reservation,
    allocate,
    hugetlb_page_size,
)
from uffdharness.scenarios.model import ALL_KINDS, Scenario

WP_FILE = Feature.PAGEFAULT_FLAG_WP | Feature.WP_HUGETLBFS_SHMEM
MINOR_WP = RegisterMode.MINOR | RegisterMode.WP


def test_every_kind_has_exactly_one_row():
    assert sorted(spec.name for spec in KIND_TABLE) == sorted(kind.value for kind in MemoryKind)
    assert ALL_KINDS == ("anon", "shmem", "memfd", "memfd-private", "hugetlb", "hugetlb-private")
    assert set(CATALOGUE_KINDS) - set(ALL_KINDS) == {
        "anon-thp",
        "shmem-thp",
        "anon-mthp",
        "shmem-mthp",
        "hugetlb-1g",
        "hugetlb-1g-private",
    }
    assert MemoryKind.HUGETLB.spec is SPECS["hugetlb"]


def test_hugetlb_page_size_is_the_systems_default():
    with open("/proc/meminfo") as meminfo:
        line = next(line for line in meminfo if line.startswith("Hugepagesize:"))
    assert hugetlb_page_size() == int(line.split()[1]) * 1024
    assert MemoryKind.HUGETLB_PRIVATE.page_size == hugetlb_page_size()
    assert MemoryKind.MEMFD.page_size == PAGE_SIZE


@pytest.mark.parametrize(
    ("kind", "modes", "features"),
    [
        ("anon", RegisterMode.MISSING, Feature(0)),
        ("anon", RegisterMode.WP, Feature.PAGEFAULT_FLAG_WP),
        ("shmem", RegisterMode.MISSING | RegisterMode.WP, Feature.MISSING_SHMEM | WP_FILE),
        ("memfd", RegisterMode.MINOR, Feature.MINOR_SHMEM),
        ("hugetlb", RegisterMode.MISSING, Feature.MISSING_HUGETLBFS),
        (
            "hugetlb-private",
            RegisterMode.MINOR | RegisterMode.WP,
            Feature.MINOR_HUGETLBFS | WP_FILE,
        ),
    ],
)
def test_mode_features(kind, modes, features):
    assert SPECS[kind].mode_features(modes) == features


def test_minor_on_anon_is_refused_by_the_table_and_by_the_kernel(uffd_factory, region_factory):
    assert not SPECS["anon"].supports(RegisterMode.MINOR)
    with pytest.raises(ValueError, match="MINOR faults are not supported on anon"):
        SPECS["anon"].mode_features(RegisterMode.MINOR)
    uffd = uffd_factory()
    region = region_factory("anon", 1)
    with pytest.raises(OSError) as refused:
        uffd.register(region, mode=RegisterMode.MINOR)
    assert refused.value.errno_name == "EINVAL"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_mapping_matches_the_row(kind, region_factory):
    spec = SPECS[kind]
    region = region_factory(kind, 2)
    assert region.page_size == spec.page_size
    (vma,) = maps.read_maps_range(region.addr, region.end)
    assert (vma.perms[3] == "s") == spec.shared
    assert (region.fd >= 0) == (spec.backing == "memfd")


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_drop_advice_gives_the_pages_back(kind, region_factory):
    """After the row's drop advice the pages read zero, through this mapping and through
    the backing file: the next touch of a registered range would fault as missing."""
    region = region_factory(kind, 2)
    region.fill(b"kept")
    region.madvise(SPECS[kind].drop_advice)
    assert region.verify(b"\0")
    if region.fd >= 0:
        alias = region.alias()
        assert alias.verify(b"\0")


def test_reservation_is_aligned_and_guarded():
    align = 2 << 20
    with Reservation(3 * PAGE_SIZE, align) as room:
        assert room.start % align == 0
        assert room.base < room.start
        assert room.start + 3 * PAGE_SIZE < room.base + room.length
        (vma,) = maps.read_maps_range(room.base, room.base + room.length)
        assert vma.perms.startswith("---")
    assert maps.read_maps_range(room.base, room.base + room.length) == []


def test_view_counts_the_same_mapping_in_other_pages():
    with allocate("anon", 1024) as region:
        huge = region.view(2 << 20)
        assert (huge.addr, huge.length, huge.pages) == (region.addr, region.length, 2)
        huge.fill_indexed(seed=7)
        assert huge.find_indexed_mismatch(seed=7) is None
        assert region.find_indexed_mismatch(seed=7) is not None  # other page numbering
    assert not huge.closed  # a view owns nothing


def _scenario(**declared) -> Scenario:
    return Scenario(id="t", title="t", checks="t", run=lambda ctx: None, **declared)


def test_requirements_come_from_the_table():
    wp = _scenario(memory=CATALOGUE_KINDS, modes=RegisterMode.WP, uses=("drop",))
    assert [g.since for g in wp.requirements("anon")] == ["5.10"]
    assert sorted(g.since for g in wp.requirements("shmem")) == ["5.10", "5.19"]
    private = wp.requirements("hugetlb-private")
    assert [g.since for g in private if "drop" in g.reason] == ["5.18"]
    assert not [g for g in wp.requirements("hugetlb") if "drop" in g.reason]


def test_skip_reason_answers_from_the_declaration():
    item = _scenario(memory=("hugetlb-private",), modes=RegisterMode.MISSING, uses=("drop",))
    offered = Feature.MISSING_HUGETLBFS
    reason = item.skip_reason(parse("5.10.0"), offered, True, "hugetlb-private")
    assert reason is not None and "5.18" in reason and "MADV_DONTNEED" in reason
    assert item.skip_reason(parse("6.1.0"), offered, True, "hugetlb-private") is None
    reason = item.skip_reason(parse("6.1.0"), Feature(0), True, "hugetlb-private")
    assert reason == "kernel lacks UFFD_FEATURE_MISSING_HUGETLBFS (added in 4.11)"


def test_a_kind_that_cannot_take_a_declared_mode_is_refused_at_declaration():
    with pytest.raises(ValueError, match="anon memory does not support"):
        _scenario(memory=("anon",), modes=RegisterMode.MINOR)
