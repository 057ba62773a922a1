"""Known-bug signatures of the VMA-merge scenarios: what a buggy kernel's facts give through
the runner's judge, on a kernel before the fix and on one that carries it."""

from __future__ import annotations

import pytest

from uffdharness.kernelversion import parse
from uffdharness.runner import judge, run, select
from uffdharness.scenarios import CATALOGUE
from uffdharness.scenarios.model import HUGETLB_KINDS, SMALL_PAGE_KINDS, Observation
from uffdharness.scenarios.vma_merge import UFFD_MERGE_FIX

BUGGY_KERNEL = parse("6.1.0")
FIXED_KERNEL = parse("6.12.0")

# What a pre-6.4 kernel reports: the piece split off where the range starts inside a VMA
# never merges back.
BUGGY = {
    "unregister-merge": Observation(
        {"vmas_after_register": 2, "vmas_after_unregister": 3},
        False,
        "vmas_after_unregister=3 (expected 2)",
        "vmas_after_unregister: 3, expected 2",
    ),
    "register-merge": Observation(
        {"vmas_after_first_register": 2, "vmas_after_second_register": 3},
        False,
        "vmas_after_second_register=3 (expected 2)",
        "vmas_after_second_register: 3, expected 2",
    ),
    "unregister-middle": Observation(
        {"vmas_after_unregister": 3, "vmas_after_reregister": 3},
        False,
        "vmas_after_reregister=3 (expected 1)",
        "vmas_after_reregister: 3, expected 1",
    ),
    "register-cuts-vma": Observation(
        {"vmas_after_register": 3, "vmas_after_unregister": 3, "kernel_warned": False},
        False,
        "vmas_after_unregister=3 (expected 1)",
        "vmas_after_unregister: 3, expected 1",
    ),
}


def pairs(kinds):
    return [(scenario, kind) for scenario in BUGGY for kind in kinds]


@pytest.mark.parametrize(("scenario", "memory"), pairs(SMALL_PAGE_KINDS))
def test_buggy_facts_are_the_known_bug_before_the_fix(scenario, memory):
    verdict, reason = judge(CATALOGUE[scenario], BUGGY_KERNEL, BUGGY[scenario], memory)
    assert verdict == "known-bug"
    assert f"fixed in 6.4 by '{UFFD_MERGE_FIX.fix}', running 6.1.0" in reason


@pytest.mark.parametrize(("scenario", "memory"), pairs(SMALL_PAGE_KINDS))
def test_buggy_facts_on_a_fixed_kernel_fail_naming_the_bug(scenario, memory):
    verdict, reason = judge(CATALOGUE[scenario], FIXED_KERNEL, BUGGY[scenario], memory)
    assert verdict == "fail"
    assert f"shows the bug fixed in 6.4 ('{UFFD_MERGE_FIX.fix}') on 6.12.0" in reason
    assert BUGGY[scenario].reason in reason


@pytest.mark.parametrize("memory", SMALL_PAGE_KINDS)
def test_unregister_middle_two_pieces_is_the_known_bug(memory):
    seen = Observation(
        {"vmas_after_unregister": 3, "vmas_after_reregister": 2},
        False,
        "vmas_after_reregister=2 (expected 1)",
        "vmas_after_reregister: 2, expected 1",
    )
    assert judge(CATALOGUE["unregister-middle"], BUGGY_KERNEL, seen, memory)[0] == "known-bug"


@pytest.mark.parametrize("memory", SMALL_PAGE_KINDS)
def test_register_cuts_vma_warn_alone_is_a_fail(memory):
    """Merged back whole but the kernel WARNed: not the merge bug, whatever the kernel."""
    seen = Observation(
        {"vmas_after_register": 3, "vmas_after_unregister": 1, "kernel_warned": True},
        False,
        "vmas_after_unregister=1 (expected 1)",
        "kernel_warned: True, expected False",
    )
    for kernel in (BUGGY_KERNEL, FIXED_KERNEL):
        assert judge(CATALOGUE["register-cuts-vma"], kernel, seen, memory) == (
            "fail",
            "kernel_warned: True, expected False",
        )


@pytest.mark.parametrize("memory", SMALL_PAGE_KINDS)
def test_other_differences_on_a_buggy_kernel_fail(memory):
    """Two VMAs as a fixed kernel leaves them, but the wrong one registered."""
    seen = Observation(
        {"vmas_after_register": 2, "vmas_after_unregister": 2},
        False,
        "vmas_after_unregister=2 (expected 2)",
        "layout_after_unregister: [(0, 5, []), (5, 20, ['um'])], "
        "expected [(0, 5, ['um']), (5, 20, [])]",
    )
    verdict, reason = judge(CATALOGUE["unregister-merge"], BUGGY_KERNEL, seen, memory)
    assert (verdict, reason) == ("fail", seen.reason)


@pytest.mark.parametrize(("scenario", "memory"), pairs(HUGETLB_KINDS))
def test_hugetlb_is_never_the_merge_bug(scenario, memory):
    """hugetlb VMAs never merge: its three pieces are expected, so a failing hugetlb
    observation showing them is some other defect."""
    seen = BUGGY[scenario]
    failing = Observation(
        {**seen.facts, "kernel_warned": True}, False, seen.key, "kernel_warned: True"
    )
    for kernel in (BUGGY_KERNEL, FIXED_KERNEL):
        assert judge(CATALOGUE[scenario], kernel, failing, memory) == (
            "fail",
            "kernel_warned: True",
        )


def test_a_passing_observation_passes_on_any_kernel():
    seen = Observation({"vmas_after_unregister": 2}, True, "vmas_after_unregister=2")
    for kernel in (BUGGY_KERNEL, FIXED_KERNEL):
        assert judge(CATALOGUE["unregister-merge"], kernel, seen, "anon") == ("pass", "")


def test_signatures_name_facts_the_scenarios_report():
    """Each signature fact is one the scenario really reports (a rename would silently
    turn the known bug into a plain fail)."""
    chosen = [pair for pair in select(CATALOGUE.values(), memory=["anon"]) if pair[0].id in BUGGY]
    results = run(chosen, timeout=30)
    assert {result.id for result in results} == set(BUGGY)
    for result in results:
        assert result.verdict in ("pass", "known-bug"), (result.name, result.reason)
        for alternative in CATALOGUE[result.id].known_bug.shows:
            assert set(alternative) <= set(result.facts), (result.name, alternative)
