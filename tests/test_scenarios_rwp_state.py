"""rwp-mprotect, rwp-gup, rwp-fork, rwp-fork-pin and rwp-swap-cow through the runner: they
pass where the kernel has RWP (7.3: tests/test_matrix_cli.py runs every rwp-* scenario in
Debian's 7.3 guest) and skip with the feature named elsewhere."""

from __future__ import annotations

import pytest
from scenario_results import run_scenarios

IDS = ("rwp-mprotect", "rwp-gup", "rwp-fork", "rwp-fork-pin", "rwp-swap-cow")


@pytest.mark.timeout(120)
def test_rwp_state_scenarios_pass_or_name_what_is_missing():
    results = run_scenarios(IDS, timeout=20)
    assert {scenario_id for scenario_id, _ in results} == set(IDS)
    for result in results.values():
        if result.verdict == "skip":
            assert (
                "kernel lacks UFFD_FEATURE_RWP" in result.reason
                or "no swap" in result.reason
                or "io_uring" in result.reason
            ), result
        else:
            assert result.verdict == "pass", (result.name, result.reason)
