"""The write-protect, move and race scenarios through the runner on this kernel, plus the
version keys of their known bugs."""

from __future__ import annotations

import json
import re

import pytest
from scenario_results import passed_facts, run_scenarios

from uffdharness.kernelversion import parse
from uffdharness.runner import judge
from uffdharness.scenarios import CATALOGUE
from uffdharness.scenarios.model import Observation
from uffdharness.scenarios.wp_cleared import WP_CLOSE_FIX, WP_MREMAP_FIX
from uffdharness.scenarios.wp_fork import HUGETLB_FORK_FIX, WP_FORK_FIX

SCENARIOS = (
    "wp-basic",
    "wp-shmem-survives-zap",
    "wp-unpopulated",
    "wp-async-pagemap-scan",
    "wp-cleared-on-close",
    "wp-cleared-on-mremap",
    "wp-fork",
    "wp-fork-hugetlb-private",
    "move",
    "per-vma-lock-race",
)

# Reasons a scenario may legitimately skip on some machine (missing feature, old kernel,
# no hugepages); anything else must pass on a fixed kernel.
SKIP_REASONS = re.compile(r"kernel lacks|needs kernel >=|hugepages|not supported on|THP")


@pytest.fixture(scope="module")
def results():
    return run_scenarios(SCENARIOS, timeout=15)


def facts(results, scenario: str, memory: str) -> dict:
    return passed_facts(results, scenario, memory, SKIP_REASONS)


def test_every_pair_passes_or_skips_for_a_stated_reason(results):
    expected = {
        "wp-basic": {"anon", "shmem", "memfd", "memfd-private", "hugetlb", "hugetlb-private"}
        | {"anon-thp", "shmem-thp"},
        "wp-shmem-survives-zap": {"shmem", "memfd", "hugetlb"},
        "wp-unpopulated": {"anon"},
        "wp-fork": {"anon", "shmem", "memfd", "memfd-private", "hugetlb"},
        "wp-fork-hugetlb-private": {"hugetlb-private"},
        "move": {"anon"},
        "per-vma-lock-race": {"anon", "shmem", "hugetlb"},
    }
    for scenario, kinds in expected.items():
        assert {m for s, m in results if s == scenario} == kinds
    for result in results.values():
        if result.verdict == "skip":
            assert SKIP_REASONS.search(result.reason), (result.name, result.reason)
        else:
            assert result.verdict == "pass", (result.name, result.reason, result.facts)
        assert result.key
        json.dumps(result.facts)  # reports are JSON: no sets, enums or bytes in facts
        assert result.duration_s < 5, (result.name, result.duration_s)


@pytest.mark.parametrize("memory", ["anon", "memfd", "hugetlb", "hugetlb-private"])
def test_wp_basic_facts(results, memory):
    f = facts(results, "wp-basic", memory)
    assert f["write_fault"] == {
        "flags": ["WRITE", "WP"],
        "page": 1,
        "offset_from_region": f["page_size"],
    }
    assert f["writer_blocked_while_protected"] and f["writer_woken_by_unprotect"]
    assert f["read_faulted"] is False
    assert f["wp_pages_after_protect"] == list(range(f["pages"]))
    assert 1 not in f["wp_pages_after_unprotect"]
    assert f["written_data_ok"] and f["other_pages_ok"]


@pytest.mark.parametrize("memory", ["shmem", "hugetlb"])
def test_wp_survives_zap_facts(results, memory):
    f = facts(results, "wp-shmem-survives-zap", memory)
    dontneed = f["rounds"]["MADV_DONTNEED"]
    pageout = f["rounds"]["MADV_PAGEOUT"]
    assert dontneed["unmapped"] == [True, True] and dontneed["wp_kept"]
    assert dontneed["fault"]["flags"] == ["WRITE", "WP"] and dontneed["wp_fault_ok"]
    marker = "UFFD_WP+SWAPPED" if memory == "shmem" else "UFFD_WP"
    assert dontneed["pagemap_after"] == [marker, marker]
    assert pageout["madvise"] == ("EINVAL" if memory == "hugetlb" else "ok")
    assert pageout["wp_fault_ok"] and f["data_intact"]


def test_wp_unpopulated_facts(results):
    f = facts(results, "wp-unpopulated", "anon")
    with_feature, without = f["with_wp_unpopulated"], f["without_wp_unpopulated"]
    assert with_feature["write_fault"]["flags"] == ["WRITE", "WP"]
    assert all("UFFD_WP" in entry for entry in with_feature["pagemap_after_protect"])
    assert without["write_fault"] is None and without["pagemap_after_protect"] == ["", "", ""]
    assert not with_feature["read_faulted"] and with_feature["read_zeros"]


@pytest.mark.parametrize("memory", ["anon", "shmem", "hugetlb"])
def test_wp_async_scan_facts(results, memory):
    f = facts(results, "wp-async-pagemap-scan", memory)
    assert f["scan_reported"] == f["written_pages"]
    assert f["second_scan_reported"] == []
    assert f["wp_pages_after_scan"] == list(range(f["pages"]))
    assert f["writes_blocked"] is False and f["messages_queued"] == 0


@pytest.mark.parametrize("memory", ["anon", "memfd", "hugetlb"])
def test_wp_cleared_on_close_facts(results, memory):
    f = facts(results, "wp-cleared-on-close", memory)
    assert f["wp_pages_before_close"] and f["wp_pages_after_close"] == []
    assert f["uffd_vm_flags_after_close"] == []


@pytest.mark.parametrize("memory", ["anon", "shmem", "hugetlb-private"])
def test_wp_cleared_on_mremap_facts(results, memory):
    f = facts(results, "wp-cleared-on-mremap", memory)
    assert f["moved"] and f["wp_pages_before"] and f["wp_pages_after_move"] == []
    assert f["write_in_child"]["child"] == "ok" and f["write_in_child"]["write_finished"]


@pytest.mark.parametrize(
    ("scenario", "memory"),
    [
        ("wp-fork", "anon"),
        ("wp-fork", "memfd"),
        ("wp-fork", "hugetlb"),
        ("wp-fork-hugetlb-private", "hugetlb-private"),
    ],
)
def test_wp_fork_facts(results, scenario, memory):
    f = facts(results, scenario, memory)
    assert f["pagemap_reports_uffd_wp"] is True
    assert f["without_event_fork"]["child_wp_pages"] == []
    assert f["without_event_fork"]["child_vm_flags"] == []
    inherited = f["with_event_fork"]
    assert inherited["fork_events"] == 1 and inherited["child_vm_flags"] == ["uw"]
    assert inherited["child_wp_pages"] == inherited["parent_wp_pages"] != []
    assert inherited["child_faults"] == [["WRITE", "WP"]] * len(inherited["parent_wp_pages"])
    if memory == "memfd":  # the file VMA fork() copies: where 6.2's fix is visible
        alias = f["private_alias_without_event_fork"]
        assert alias["parent_wp_pages"] and alias["child_wp_pages"] == []


def test_move_facts(results):
    f = facts(results, "move", "anon")
    assert f["bulk"]["result"] == "ok" and f["bulk"]["src_reads_zero"]
    assert f["fault_driven"]["toucher_read"] == "moved-on-fault.."
    errors = f["errors"]
    assert errors["onto_populated_dst"]["result"] == "EEXIST"
    assert errors["from_src_hole"]["result"] == "ENOENT"
    assert errors["allow_src_holes"]["result"] == "ok"
    assert errors["stops_at_populated_dst"] == {"result": "EAGAIN", "bytes": 4096}


@pytest.mark.parametrize("memory", ["anon", "shmem", "hugetlb"])
def test_race_facts(results, memory):
    f = facts(results, "per-vma-lock-race", memory)
    assert f["hung_threads"] == 0 and f["data_problems"] == 0 and f["unexpected_errnos"] == []
    # 2 MiB COPYs from Python are slow: tens in the race, not hundreds
    least_ops = 10 if memory == "hugetlb" else 100
    assert sum(f["ops_done"].values()) > least_ops and sum(f["mutations_done"].values()) > 10
    assert f["pages_verified"] > 0
    expected_ops = {"anon": {"COPY", "ZEROPAGE", "MOVE"}, "shmem": {"COPY", "ZEROPAGE"}}
    assert set(f["ops_done"]) == expected_ops.get(memory, {"COPY"})


@pytest.mark.parametrize(
    ("bug", "fixed", "buggy"),
    [
        (WP_CLOSE_FIX, ("6.9", "6.8.10", "6.6.31", "6.18.44"), ("6.8.9", "6.7.12", "6.1.90")),
        (WP_MREMAP_FIX, ("6.13", "6.12.11"), ("6.12.10", "6.6.70", "6.1.120")),
        (WP_FORK_FIX, ("6.2", "6.1.11"), ("6.1.10", "6.0.19", "5.19.17")),
        (HUGETLB_FORK_FIX, ("6.4", "6.18.44"), ("6.1.192", "6.3.13", "5.19.17")),
    ],
)
def test_known_bug_versions(bug, fixed, buggy):
    assert all(bug.fixed_on(parse(v)) for v in fixed)
    assert not any(bug.fixed_on(parse(v)) for v in buggy)


# What each known bug leaves in its scenario's facts (KnownBug.showing), and a failure of
# the same scenario that is not that bug.
CHILD_OK = {"child": "ok", "child_write_finished": True, "child_data_intact": True}
BUGGY_FACTS = {
    "wp-cleared-on-close": {"wp_pages_after_close": [0, 1]},
    "wp-cleared-on-mremap": {"wp_pages_after_move": [0, 1]},
    "wp-fork": {"without_event_fork": {**CHILD_OK, "child_wp_pages": [0, 2]}},
    "wp-fork-hugetlb-private": {
        "without_event_fork": {**CHILD_OK, "child_wp_pages": [], "child_write_finished": False}
    },
}


@pytest.mark.parametrize(
    "scenario",
    ["wp-cleared-on-close", "wp-cleared-on-mremap", "wp-fork", "wp-fork-hugetlb-private"],
)
def test_buggy_observation_is_a_known_bug_only_on_old_kernels(scenario):
    item = CATALOGUE[scenario]
    seen = Observation(BUGGY_FACTS[scenario], ok=False, key="wp=[0, 1]", reason="wp: [0, 1]")
    assert judge(item, parse("6.0.1"), seen)[0] == "known-bug"
    verdict, reason = judge(item, parse("6.18.44"), seen)
    assert verdict == "fail" and item.known_bug.fix in reason


WITHOUT_FORK_CLEAN = {**CHILD_OK, "child_wp_pages": [], "child_vm_flags": []}


@pytest.mark.parametrize(
    ("scenario", "memory", "buggy", "other_failure"),
    [
        (
            "wp-cleared-on-close",
            "anon",
            {"wp_pages_after_close": [0, 1], "uffd_vm_flags_after_close": []},
            {"wp_pages_after_close": [], "uffd_vm_flags_after_close": ["uw"]},
        ),
        (
            "wp-cleared-on-mremap",
            "shmem",
            {"wp_pages_after_move": [0], "events": 0},
            {"wp_pages_after_move": [], "events": 1},
        ),
        (
            "wp-fork",
            "anon",
            {"without_event_fork": {**CHILD_OK, "child_wp_pages": [0, 2, 3]}},
            {
                "without_event_fork": WITHOUT_FORK_CLEAN,
                "with_event_fork": {**CHILD_OK, "fork_events": 0},
            },
        ),
        (
            "wp-fork",
            "memfd",
            {
                "without_event_fork": WITHOUT_FORK_CLEAN,
                "private_alias_without_event_fork": {**CHILD_OK, "child_wp_pages": [0, 2]},
            },
            {
                "without_event_fork": {**WITHOUT_FORK_CLEAN, "child_vm_flags": ["uw"]},
                "private_alias_without_event_fork": WITHOUT_FORK_CLEAN,
            },
        ),
        (
            "wp-fork-hugetlb-private",
            "hugetlb-private",
            {
                "without_event_fork": {
                    **WITHOUT_FORK_CLEAN,
                    "child_write_finished": False,
                    "child_data_intact": False,
                }
            },
            {"without_event_fork": {"child": "timeout"}},
        ),
    ],
)
def test_known_bug_is_judged_by_its_signature(scenario, memory, buggy, other_failure):
    item = CATALOGUE[scenario]
    kernel = parse("6.1.0")  # before every one of these fixes and their backports
    assert not item.known_bug.fixed_on(kernel)
    showing = Observation(buggy, ok=False, key="k", reason="as the bug shows")
    assert judge(item, kernel, showing, memory)[0] == "known-bug"
    verdict, reason = judge(item, kernel, Observation(other_failure, False, "k", "other"), memory)
    assert (verdict, reason) == ("fail", "other")
