"""rwp-mprotect, rwp-gup, rwp-fork, rwp-fork-pin and rwp-swap-cow through the runner: they
pass where the kernel has RWP (7.3: tests/test_matrix_cli.py runs every rwp-* scenario in
Debian's 7.3 guest) and skip with the feature named elsewhere."""

from __future__ import annotations

import pytest

from uffdharness import system
from uffdharness.runner import run, select
from uffdharness.scenarios import CATALOGUE

IDS = ("rwp-mprotect", "rwp-gup", "rwp-fork", "rwp-fork-pin", "rwp-swap-cow")


@pytest.mark.timeout(120)
def test_rwp_state_scenarios_pass_or_name_what_is_missing():
    pairs = select([CATALOGUE[i] for i in IDS])
    assert {item.id for item, _ in pairs} == set(IDS)
    results = run(pairs, timeout=20, info=system.facts())
    for result in results:
        if result.verdict == "skip":
            assert (
                "kernel lacks UFFD_FEATURE_RWP" in result.reason
                or "no swap" in result.reason
                or "io_uring" in result.reason
            ), result
        else:
            assert result.verdict == "pass", (result.name, result.reason)
