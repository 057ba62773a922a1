"""Running named catalogue scenarios through the runner, shared by the scenario tests: the
results keyed by (id, memory), and the facts of a pair that must pass (or skip for one of
the reasons a test file allows)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import pytest

from uffdharness.runner import Result, run, select
from uffdharness.scenarios import CATALOGUE


def run_scenarios(
    names: Iterable[str],
    timeout: float,
    memory: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
) -> dict[tuple[str, str], Result]:
    """Each named scenario on its kinds (``memory``: the same list for all, or a list per
    name; None: every kind the scenario declares)."""
    pairs = [
        (item, kind)
        for name in names
        for item, kind in select(
            CATALOGUE.values(), name, memory.get(name) if isinstance(memory, Mapping) else memory
        )
        if item.id == name
    ]
    return {(r.id, r.memory): r for r in run(pairs, timeout=timeout)}


def passed_facts(
    results: Mapping[tuple[str, str], Result], scenario: str, memory: str, skip_reasons: re.Pattern
) -> dict:
    """The facts of a pair that passed; a pytest skip where it skipped for one of
    ``skip_reasons``; a failure otherwise."""
    result = results[(scenario, memory)]
    if result.verdict == "skip":
        assert skip_reasons.search(result.reason), result.reason
        pytest.skip(result.reason)
    assert result.verdict == "pass", f"{result.name}: {result.reason}"
    return result.facts
