"""The transparent-huge-page scenarios through the runner on this kernel (minor-collapse,
move-volume, move-pmd-split, and wp-basic / wp-cleared-on-close on the THP kinds), plus
the helpers that tell whether THPs formed."""

from __future__ import annotations

import json
import re

import pytest
from scenario_results import passed_facts, run_scenarios

from uffdharness import kpageflags
from uffdharness.memory import PAGE_SIZE, allocate, pmd_size
from uffdharness.pagemap import Pagemap
from uffdharness.scenarios import CATALOGUE, huge
from uffdharness.scenarios.model import THP_KINDS, Skip

pytestmark = pytest.mark.timeout(120)

PAIRS = {
    "minor-collapse": ("shmem-thp",),
    "move-volume": ("anon", "anon-thp"),
    "move-pmd-split": ("anon-thp",),
    "wp-basic": THP_KINDS,
    "wp-cleared-on-close": THP_KINDS,
}
# Why a pair may skip on some machine: an old kernel, THP off for a user, no THP to be had.
SKIP_REASONS = re.compile(
    r"needs kernel >=|kernel lacks|THP is off|no THP could be allocated|"
    r"transparent hugepages|shmem THP is denied|pagemap does not report uffd-wp"
)
PMD = pmd_size()


@pytest.fixture(scope="module")
def results():
    return run_scenarios(PAIRS, timeout=30, memory=PAIRS)


def facts(results, scenario: str, memory: str) -> dict:
    return passed_facts(results, scenario, memory, SKIP_REASONS)


def test_the_scenarios_declare_these_kinds():
    for name, kinds in PAIRS.items():
        if name.startswith("wp-"):
            assert set(kinds) <= set(CATALOGUE[name].memory)
        else:
            assert CATALOGUE[name].memory == kinds


def test_every_pair_passes_or_skips_for_a_stated_reason(results):
    assert {pair for pair in results} == {(n, k) for n, kinds in PAIRS.items() for k in kinds}
    for result in results.values():
        if result.verdict == "skip":
            assert SKIP_REASONS.search(result.reason), (result.name, result.reason)
        else:
            assert result.verdict == "pass", (result.name, result.reason, result.facts)
        assert result.key
        json.dumps(result.facts)
        assert result.duration_s < 5, (result.name, result.duration_s)


@pytest.mark.parametrize("memory", ["shmem-thp"])
def test_minor_collapse_maps_a_pmd_and_wp_refuses(results, memory):
    f = facts(results, "minor-collapse", memory)
    minor, protected = f["minor"], f["minor_wp"]
    assert minor["faults_before_collapse"] == ["minor", "minor"]
    assert minor["pmd_mapped_before"] == 0 and minor["pmd_mapped_after"] == 2 * PMD
    assert minor["madvise_collapse"] == "ok" and minor["faults_after_collapse"] == []
    assert minor["data_intact"]
    if minor["folios_before"] is not None:  # root: kpageflags
        # CONTINUE maps the page-cache folios the alias made (small ones unless shmem THP
        # is "always"), each page by a PTE
        assert minor["folios_before"] == minor["cache_folios"]
        assert minor["folios_after"] == minor["folios_after_reading"] == [[PMD, 2]]
    assert protected["madvise_collapse"] == "EINVAL" and protected["pmd_mapped_after"] == 0
    assert protected["data_intact"]


@pytest.mark.parametrize(
    ("memory", "pages", "huge_bytes"), [("anon", 256, 0), ("anon-thp", 16, 16)]
)
def test_move_volume_moves_every_page_and_thps_as_pmds(results, memory, pages, huge_bytes):
    f = facts(results, "move-volume", memory)
    assert f["pages"] == pages
    assert f["served"] == {
        "faults": pages,
        "fault_kinds": ["missing"],
        "bytes": pages * f["page_size"],
        "failures": [],
    }
    assert f["dst_pmd_mapped_bytes"] == huge_bytes * PMD
    assert f["data_intact"] and f["src_present_pages"] == 0
    if f["source"]["folios"] is not None:
        assert f["dst_folios"] == f["source"]["folios"]


def test_move_pmd_split_leaves_small_pages(results):
    f = facts(results, "move-pmd-split", "anon-thp")
    split, unaligned = f["nohugepage_dst"], f["unaligned_dst"]
    assert split["dst_nohugepage"] and split["served"]["faults"] == 2
    assert split["dst_pmd_mapped_bytes"] == 0 and split["data_intact"]
    assert unaligned["move"] == {"result": "ok", "bytes": PMD}
    assert unaligned["dst_pmd_mapped_bytes"] == 0 and unaligned["data_intact"]
    if split["dst_folios"] is not None:
        assert split["dst_folios"] == [[PAGE_SIZE, 2 * PMD // PAGE_SIZE]]
        assert unaligned["dst_folios"] == [[PAGE_SIZE, PMD // PAGE_SIZE]]
    assert split["src_present_pages"] == unaligned["src_present_pages"] == 0


@pytest.mark.parametrize(("memory", "after_protect"), [("anon-thp", 3 * PMD), ("shmem-thp", 0)])
def test_wp_basic_on_a_pmd_mapped_thp(results, memory, after_protect):
    f = facts(results, "wp-basic", memory)
    assert f["populated_by"] == "first touch" and f["pmd_mapped_bytes"] == 3 * PMD
    assert f["pmd_mapped_bytes_after_protect"] == after_protect
    assert f["write_fault"]["flags"] == ["WRITE", "WP"] and f["write_fault"]["page"] == 1
    assert f["writer_blocked_while_protected"] and f["writer_woken_by_unprotect"]


@pytest.mark.parametrize("memory", THP_KINDS)
def test_wp_cleared_on_close_on_a_thp(results, memory):
    f = facts(results, "wp-cleared-on-close", memory)
    assert f["pmd_mapped_bytes"] == 2 * PMD
    assert f["wp_pages_before_close"] and f["wp_pages_after_close"] == []


# --- helpers ---------------------------------------------------------------------------------


def test_folio_runs_are_run_length_in_address_order(monkeypatch):
    monkeypatch.setattr(kpageflags, "readable", lambda: True)
    sizes = [PMD, PMD, 4096, 4096, 4096, 0, PMD]
    monkeypatch.setattr(kpageflags, "folio_sizes", lambda addr, length: sizes)
    assert huge.folio_runs(0, 1) == [[PMD, 2], [4096, 3], [0, 1], [PMD, 1]]
    monkeypatch.setattr(kpageflags, "readable", lambda: False)
    assert huge.folio_runs(0, 1) is None


class _Region:
    addr, length = 0, 4 * PMD


@pytest.mark.parametrize(
    ("mapped", "fallbacks", "skips"),
    [(4 * PMD, 0, False), (4 * PMD, 3, False), (2 * PMD, 0, False), (2 * PMD, 2, True)],
)
def test_first_touch_skips_only_on_a_counted_fallback(monkeypatch, mapped, fallbacks, skips):
    counts = iter([100, 100 + fallbacks])
    monkeypatch.setattr(huge, "vmstat", lambda name: next(counts))
    monkeypatch.setattr(huge, "pmd_mapped_bytes", lambda addr, length: mapped)
    touched = []

    def touch():
        touched.append(True)

    if skips:
        with pytest.raises(Skip, match=r"no THP could be allocated: 4 of 8 MiB .*\+2"):
            huge.first_touch_thps(_Region(), "anon", touch)
    else:
        got = huge.first_touch_thps(_Region(), "anon", touch)
        assert got == {"pmd_mapped_bytes": mapped, "thp_fallbacks": fallbacks}
    assert touched == [True]
    # the populated length sets the bar: half populated and half PMD-mapped is no fallback
    counts = iter([0, 5])
    got = huge.first_touch_thps(_Region(), "anon", touch, length=mapped)
    assert got["pmd_mapped_bytes"] == mapped


def test_vmstat_reads_a_counter():
    assert isinstance(huge.vmstat("nr_free_pages"), int)
    assert huge.vmstat("no_such_counter") is None


@pytest.mark.skipif(not kpageflags.readable(), reason="needs root (kpageflags)")
def test_frame_flags_in_runs_match_one_by_one():
    with allocate("anon", 64) as region:
        region.fill(b"f")
        with Pagemap() as pagemap:
            pfns = [entry.pfn for entry in pagemap.entries(region.addr, region.length)]
        pfns += [pfns[0], pfns[0] + 1]  # a repeat and a run out of order still read right
        one_by_one = [kpageflags.frame_flags([pfn])[0] for pfn in pfns]
        assert kpageflags.frame_flags(pfns) == one_by_one
