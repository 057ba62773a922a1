"""minor-wp, sigbus-wp, sigbus-retry, events-live and event-remap through the runner on this
kernel; the helpers they stand on (Region.access_catching_sigbus, FaultHandler's
on_remove="unregister"); and proof that each scenario fails when the kernel's answer is
taken away."""

from __future__ import annotations

import json
import re
import signal
import threading

import pytest
from scenario_results import passed_facts, run_scenarios
from test_handler_support import ENGINES, no_leaks  # noqa: F401 - no_leaks is a fixture

from uffdharness import syscalls as sc
from uffdharness.abi import ContinueMode, CopyMode, Feature, RegisterMode
from uffdharness.handler import FaultHandler, FillIndexed
from uffdharness.maps import read_smaps_range
from uffdharness.memory import BUS_ADRERR, PAGE_SIZE
from uffdharness.scenarios import CATALOGUE
from uffdharness.scenarios.context import Context
from uffdharness.scenarios.model import ALL_KINDS, MINOR_KINDS
from uffdharness.uffd import Userfaultfd

pytestmark = pytest.mark.timeout(120)

SCENARIOS = ("minor-wp", "sigbus-wp", "sigbus-retry", "events-live", "event-remap")
SKIP_REASONS = re.compile(r"kernel lacks|needs kernel >=|hugepages|not supported on|needs root")


def _run(*names: str, memory: list[str] | None = None):
    return run_scenarios(names, timeout=15, memory=memory)


@pytest.fixture(scope="module")
def results():
    return _run(*SCENARIOS)


def facts(results, scenario: str, memory: str) -> dict:
    return passed_facts(results, scenario, memory, SKIP_REASONS)


def test_every_pair_passes_or_skips_for_a_stated_reason(results):
    expected = {
        "minor-wp": set(MINOR_KINDS),
        "sigbus-wp": set(ALL_KINDS),
        "sigbus-retry": set(ALL_KINDS),
        "events-live": set(ALL_KINDS),
        "event-remap": set(ALL_KINDS),
    }
    assert {"hugetlb", "hugetlb-private", "memfd-private"} <= set(ALL_KINDS)
    for scenario, kinds in expected.items():
        assert {m for s, m in results if s == scenario} == kinds
    for result in results.values():
        if result.verdict == "skip":
            assert SKIP_REASONS.search(result.reason), (result.name, result.reason)
        else:
            assert result.verdict == "pass", (result.name, result.reason, result.facts)
        json.dumps(result.facts)  # reports are JSON
        assert result.duration_s < 1.0, (result.name, result.duration_s)


def test_declared_gates():
    minor_wp = CATALOGUE["minor-wp"]
    assert minor_wp.min_kernel == "6.4"  # UFFDIO_CONTINUE_MODE_WP
    assert {g.since for g in minor_wp.requirements("hugetlb")} >= {"6.4", "5.19", "5.13"}
    events = CATALOGUE["events-live"]
    assert "5.16" in {g.since for g in events.requirements("hugetlb")}  # hugetlb mremap
    assert "5.18" in {g.since for g in events.requirements("hugetlb-private")}  # DONTNEED
    assert "5.16" in {g.since for g in CATALOGUE["event-remap"].requirements("hugetlb")}
    assert "5.19" in {g.since for g in CATALOGUE["sigbus-wp"].requirements("shmem")}


@pytest.mark.parametrize("memory", MINOR_KINDS)
def test_minor_wp_facts(results, memory):
    f = facts(results, "minor-wp", memory)
    assert f["minor_fault"]["flags"] == ["MINOR"]
    assert f["wp_pages_after_continue"] == [1] and f["wp_pages_after_unprotect"] == []
    assert f["write_fault"] == {
        "flags": ["WRITE", "WP"],
        "page": 1,
        "offset_from_region": f["page_size"],
    }
    assert f["writer_blocked_while_protected"] and f["writer_woken_by_unprotect"]
    assert f["written_data_ok"] and f["rest_of_page_is_page_cache"]
    if memory != "shmem":
        assert f["page_cache_after_write"] == ("old" if "private" in memory else "write")


@pytest.mark.parametrize("memory", ALL_KINDS)
def test_sigbus_wp_facts(results, memory):
    f = facts(results, "sigbus-wp", memory)
    for case in ("protected_write", "copy_mode_wp_sigbus"):
        assert f[case]["write"]["outcome"] == "SIGBUS"
        assert f[case]["queued_after_write"] == [] and f[case]["data_intact"]
    assert f["protected_write"]["write_after_unprotect"] == {"outcome": "ok"}
    assert f["copy_mode_wp"]["wp_pages_after_copy"] == [0]
    assert f["copy_mode_wp"]["write_fault"]["flags"] == ["WRITE", "WP"]


@pytest.mark.parametrize("memory", ALL_KINDS)
def test_sigbus_retry_facts(results, memory):
    f = facts(results, "sigbus-retry", memory)
    for page in ("page0", "page1"):
        retry = f["retry"][page]
        assert retry["first_read"]["outcome"] == "SIGBUS"
        assert retry["retried_read"] == {"outcome": "ok"} and retry["page_holds_resolved_data"]
    assert f["retry"]["page1"]["retried_value"] == 0
    assert f["child_without_event_fork"]["child_access"] == {"sigbus": False, "reads_zero": True}
    child = f["child_with_event_fork"]
    assert child["event"] == "ForkEvent" and child["child_ended_by"] == "SIGBUS"
    assert child["queued_on_parent_uffd"] == child["queued_on_child_uffd"] == []


@pytest.mark.parametrize("memory", ALL_KINDS)
def test_events_live_facts(results, memory):
    f = facts(results, "events-live", memory)
    # every kind here has uffd-wp on this kernel (6.18), so the remap_wp case runs too
    assert set(f) == {
        f"{case}_{engine}"
        for case in ("fork", "remap", "remove", "remap_wp")
        for engine in ("native", "thread")
    }
    pages = 4 if memory.startswith("hugetlb") else 8
    for engine in ("native", "thread"):
        fork, remap, remove, remap_wp = (
            f[f"{case}_{engine}"] for case in ("fork", "remap", "remove", "remap_wp")
        )
        assert fork["child_first_wrong_offset"] == -1 and fork["uffds_adopted"] == 1
        assert remap["served_ranges"][0][0] == 0 and remap["first_wrong_offset"] is None
        assert remove["removed_pages_read_zero"] and remove["faults_after_remove"] == 0
        assert 1 not in remove["registered_pages_after_remove"]
        # UFFDIO_COPY_MODE_WP: every page arrived protected, each write then a WP fault
        assert remap_wp["wp_pages_after_reads"] == list(range(pages))
        assert (remap_wp["missing_faults"], remap_wp["wp_faults"]) == (pages, pages)
        assert remap_wp["wp_pages_after_writes"] == []


# --- the checks can fail -------------------------------------------------------------------------


def _reasons(results) -> dict[str, str]:
    return {memory: r.reason for (_, memory), r in results.items() if r.verdict != "skip"}


def test_minor_wp_fails_without_continue_mode_wp(monkeypatch):
    plain = Userfaultfd.continue_

    def without_wp(self, target, length=None, mode=ContinueMode(0)):
        return plain(self, target, length, ContinueMode(int(mode) & ~int(ContinueMode.WP)))

    monkeypatch.setattr(Userfaultfd, "continue_", without_wp)  # the forked scenario inherits it
    reasons = _reasons(_run("minor-wp", memory=["memfd"]))
    if not reasons:
        pytest.skip("minor-wp skips here")
    assert "wp_pages_after_continue: [], expected [1]" in reasons["memfd"]
    assert "write_fault" in reasons["memfd"]


def test_sigbus_wp_fails_when_copy_ignores_mode_wp(monkeypatch):
    plain = Userfaultfd.copy

    def without_wp(self, dst, src, length=None, mode=CopyMode(0), **kwargs):
        return plain(self, dst, src, length, CopyMode(int(mode) & ~int(CopyMode.WP)), **kwargs)

    monkeypatch.setattr(Userfaultfd, "copy", without_wp)
    reasons = _reasons(_run("sigbus-wp", memory=["anon"]))
    if not reasons:
        pytest.skip("sigbus-wp skips here")
    assert "copy_mode_wp.wp_pages_after_copy: [], expected [0]" in reasons["anon"]
    assert "copy_mode_wp_sigbus.write" in reasons["anon"]


def test_events_live_fails_when_remove_is_only_forgotten(monkeypatch):
    plain = FaultHandler.__init__

    def forgetting(self, *args, on_remove="forget", **kwargs):
        plain(self, *args, on_remove="forget", **kwargs)

    monkeypatch.setattr(FaultHandler, "__init__", forgetting)
    reasons = _reasons(_run("events-live", memory=["anon"]))
    if not reasons:
        pytest.skip("events-live skips here")
    assert "remove_native.registered_pages_after_remove" in reasons["anon"]
    assert "remove_native.removed_pages_read_zero: False, expected True" in reasons["anon"]


# --- Region.access_catching_sigbus ---------------------------------------------------------------


@pytest.mark.timeout(20)
def test_access_catching_sigbus_reports_and_restores(uffd_factory, region_factory):
    before = signal.getsignal(signal.SIGBUS)
    region = region_factory("anon", 2)
    region.write(b"A", 0)
    assert region.access_catching_sigbus(0).value == ord("A")
    uffd = uffd_factory(Feature.SIGBUS)
    uffd.register(region.addr + PAGE_SIZE, PAGE_SIZE)
    caught = region.access_catching_sigbus(PAGE_SIZE + 5)
    assert caught.sigbus and caught.code == BUS_ADRERR
    assert caught.address == region.addr + PAGE_SIZE + 5 and caught.value is None
    assert uffd.read_events(timeout=0) == []
    uffd.zeropage(region.addr + PAGE_SIZE, PAGE_SIZE)
    again = region.access_catching_sigbus(PAGE_SIZE + 5, write=True)
    assert not again.sigbus
    assert signal.getsignal(signal.SIGBUS) == before


@pytest.mark.timeout(20)
def test_access_catching_sigbus_in_two_threads(uffd_factory, region_factory):
    """The jump buffer is per thread: SIGBUS in each of two threads returns to its own call."""
    region = region_factory("anon", 2)
    uffd = uffd_factory(Feature.SIGBUS)
    uffd.register(region)
    seen: dict[int, int] = {}

    def probe(page: int) -> None:
        for _ in range(200):
            access = region.access_catching_sigbus(page * PAGE_SIZE)
            assert access.sigbus
        seen[page] = access.address

    threads = [threading.Thread(target=probe, args=(page,)) for page in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {0: region.addr, 1: region.addr + PAGE_SIZE}


# --- FaultHandler(on_remove="unregister") ---------------------------------------------------------


def test_on_remove_must_be_known(uffd_factory):
    uffd = uffd_factory(Feature(0))
    with pytest.raises(ValueError, match="on_remove"):
        FaultHandler(uffd, FillIndexed(1), (), on_remove="drop")


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.timeout(30)
@pytest.mark.parametrize("engine", ENGINES)
def test_on_remove_unregisters(engine, uffd_factory, region_factory):
    uffd = uffd_factory(Feature.EVENT_REMOVE)
    region = region_factory("anon", 8)
    uffd.register(region, mode=RegisterMode.MISSING)
    cut, cut_end = region.addr + 2 * PAGE_SIZE, region.addr + 5 * PAGE_SIZE
    with FaultHandler(uffd, FillIndexed(7), region, engine=engine, on_remove="unregister") as h:
        toucher = threading.Thread(target=region.touch)
        toucher.start()
        toucher.join(5)
        assert not toucher.is_alive()
        madviser = threading.Thread(
            target=region.madvise, args=(sc.MADV_DONTNEED, 2 * PAGE_SIZE, 3 * PAGE_SIZE)
        )
        madviser.start()
        madviser.join(5)
        assert not madviser.is_alive(), "the REMOVE event was never read"
        registered = []
        for _ in range(500):
            registered = [
                (max(v.start, region.addr), min(v.end, region.end))
                for v in read_smaps_range(region.addr, region.end)
                if v.uffd_missing
            ]
            if len(registered) == 2:
                break
            threading.Event().wait(0.002)
        if engine != "process":
            assert h.served_ranges() == [
                (region.addr, 2 * PAGE_SIZE, 0),
                (cut_end, 3 * PAGE_SIZE, 5 * PAGE_SIZE),
            ]
    assert registered == [(region.addr, cut), (cut_end, region.end)]
    assert region.verify(b"\0", 2 * PAGE_SIZE, 3 * PAGE_SIZE)  # unregistered: no fault
    assert h.stats.faults.missing == 8 and h.stats.events["remove"] == 1
    assert h.stats.errors == {}


def test_sigbus_retry_fails_without_hanging_when_faults_queue_instead(monkeypatch):
    """A kernel that queues a message instead of raising SIGBUS: each blocked access is
    reported as such (the next COPY/ZEROPAGE wakes it), a fail, not a hang."""
    plain = Context.uffd

    def without_sigbus(self, features=Feature(0), **kwargs):
        return plain(self, Feature(int(features) & ~int(Feature.SIGBUS)), **kwargs)

    monkeypatch.setattr(Context, "uffd", without_sigbus)
    (result,) = _run("sigbus-retry", memory=["anon"]).values()
    if result.verdict == "skip":
        pytest.skip(result.reason)
    assert result.verdict == "fail", result.reason
    assert "retry.page0.first_read: {'outcome': 'blocked'}, expected" in result.reason
    assert "retry.page0.queued_after_sigbus" in result.reason
