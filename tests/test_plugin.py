"""The pytest plugin as a user meets it: markers, fixtures, the catalogue as items."""

from __future__ import annotations

import os

import pytest

from uffdharness.hugepages import counts, pool_frozen

pytestmark = pytest.mark.timeout(120)


def test_markers_skip_with_precise_reasons(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requires_kernel(">=99.0")
        def test_future():
            pass

        @pytest.mark.requires_kernel(">=4.0")
        def test_past():
            pass

        @pytest.mark.requires_feature("MOVE", "THREAD_ID")
        def test_feature(uffd_features):
            assert uffd_features

        @pytest.mark.requires_root
        def test_root():
            pass
        """
    )
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.stdout.re_match_lines([r"SKIPPED .*needs kernel >=99.0, running \d+\.\d+"])
    outcomes = result.parseoutcomes()
    expected_passed = 3 if os.geteuid() == 0 else 2
    assert outcomes.get("passed") == expected_passed and outcomes.get("skipped", 0) >= 1


def test_readme_style_custom_check(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requires_feature("MOVE")
        def test_move_keeps_data(uffd, region_factory):
            dst, src = region_factory("anon", 4), region_factory("anon", 4)
            src.fill(b"payload!")
            uffd.register(dst)
            assert uffd.move(dst.addr, src.addr, dst.length) == dst.length
            assert dst.verify(b"payload!")
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_fault_handler_fixture_serves_and_stops(pytester):
    pytester.makepyfile(
        """
        from uffdharness.handler import FillIndexed

        def test_served(uffd, region_factory, fault_handler):
            region = region_factory("memfd", 8)
            uffd.register(region)
            handler = fault_handler(uffd, FillIndexed(7), region, engine="native")
            region.touch()
            assert region.find_indexed_mismatch(7) is None
            assert handler.stats.faults.missing == 8
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


@pytest.mark.skipif(os.geteuid() != 0, reason="reserving hugepages needs root")
def test_requires_hugepages_reserves_and_restores(pytester):
    with pool_frozen():  # no other harness process resizes the pool meanwhile
        _requires_hugepages_reserves_and_restores(pytester)


def _requires_hugepages_reserves_and_restores(pytester):
    before = counts().persistent
    pytester.makepyfile(
        f"""
        import pytest
        from uffdharness.hugepages import counts

        @pytest.mark.requires_hugepages(3)
        def test_pool(region_factory):
            assert counts().persistent >= {before} + 3
            region = region_factory("hugetlb", 3)
            region.fill(b"h")
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert counts().persistent == before


def test_catalogue_items_report_verdicts(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess(
        "--uffd-catalogue", "-k", "unregister-merge or bad-inputs", "-v", "-p", "no:cacheprovider"
    )
    result.stdout.fnmatch_lines(["*catalogue::unregister-merge[[]anon[]] PASSED*"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes["passed"] >= 4
