"""The huge-page memory kinds (anon-thp, shmem-thp, anon-mthp, hugetlb-1g) and the run's
set-up that provides them: each maps what its row says once KindSetup switched the THP
knobs on or reserved the pool, and every knob is back afterwards."""

from __future__ import annotations

import os

import pytest

from uffdharness import kpageflags, maps, thp
from uffdharness.kindsetup import KindSetup, thp_knobs, thp_reason
from uffdharness.memory import SPECS, allocate, pmd_size

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (THP knobs, kpageflags)"),
]


def _knob_values() -> dict[str, str | None]:
    return {
        knob.path: thp.read_knob(knob.path)
        for kind in ("anon-thp", "shmem-thp", "anon-mthp")
        for knob in thp_knobs(SPECS[kind])
    }


@pytest.fixture
def setup():
    before = _knob_values()
    with KindSetup([(k, 1) for k in ("anon-thp", "shmem-thp", "anon-mthp")], True) as kinds:
        yield kinds
    assert _knob_values() == before


@pytest.mark.parametrize(
    ("kind", "field"), [("anon-thp", "anon_huge_pages"), ("shmem-thp", "shmem_pmd_mapped")]
)
def test_thp_kind_maps_pmds(setup, kind, field):
    if setup.skip_reason(kind):
        pytest.skip(setup.skip_reason(kind))
    with allocate(kind, 2) as region:
        assert region.page_size == pmd_size() and region.addr % pmd_size() == 0
        region.fill(b"thp!")
        (vma,) = maps.read_smaps_range(region.addr, region.end)
        assert getattr(vma, field) == region.length
        assert kpageflags.folio_sizes(region.addr, region.length) == [pmd_size()] * 2


def test_mthp_kind_maps_one_folio_of_each_size(setup):
    if setup.skip_reason("anon-mthp"):
        pytest.skip(setup.skip_reason("anon-mthp"))
    sizes = thp.mthp_sizes(pmd_size())
    assert sizes and all(size < pmd_size() for size in sizes)
    for size in sizes:
        with allocate("anon-mthp", length=size) as region:
            assert region.addr % size == 0
            region.fill(b"m")
            assert kpageflags.folio_sizes(region.addr, region.length) == [size]


def test_without_the_knobs_a_user_gets_the_reason(monkeypatch):
    monkeypatch.setattr(thp.Knob, "satisfied", lambda knob: False)
    reason = thp_reason(SPECS["anon-thp"], is_root=False)
    assert reason.startswith("THP is off for anon-thp (enabled = ") and "only root" in reason


def test_hugetlb_1g_pool_is_reserved_and_given_back():
    path = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"
    if not os.path.exists(path):
        pytest.skip("kernel offers no 1 GiB hugepages")
    before = open(path).read()
    with KindSetup([("hugetlb-1g", 4)], True) as kinds:
        reason = kinds.skip_reason("hugetlb-1g")
        if reason:
            assert "cannot reserve 1 hugepages of 1024 MiB" in reason  # capped at max_pages
            pytest.skip(reason)
        with allocate("hugetlb-1g", 1) as region:
            assert region.page_size == 1 << 30 and region.addr % (1 << 30) == 0
            region.write(b"gigantic", 123)
            assert region.read(123, 8) == b"gigantic"
    assert open(path).read() == before
