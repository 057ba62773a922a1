"""What the CI result formats (KCIDB, LAVA) read from a result alike: its measurement, and
whether it is one of the matrix's own rows rather than a scenario x memory pair."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .runner import Result

__all__ = ["MEASUREMENTS", "Measurement", "kernel_labels", "kernel_row", "measurements", "safe"]

# The facts that are measurements, with their unit (no spaces: LAVA's UNITS= takes one word).
MEASUREMENTS = {"pages_per_s": "pages/s"}  # the stress scenario's throughput
EXECUTED = frozenset({"pass", "known-bug", "fail"})  # verdicts whose facts were measured
# The matrix's own rows, one per kernel (matrix.runner.GUEST_ROW_ID and the expectation
# check of matrix.report.expectations_row), by the name a CI format gives them.
KERNEL_ROWS = {("guest", "-"): "guest", ("matrix-expectations", "all"): "expectations"}


class Measurement(NamedTuple):
    name: str
    value: float
    unit: str


def measurements(result: Result) -> list[Measurement]:
    """The measurements among the facts of a pair that ran to a verdict."""
    if result.verdict not in EXECUTED:
        return []
    found = []
    for name, unit in MEASUREMENTS.items():
        value = result.facts.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append(Measurement(name, float(value), unit))
    return found


def kernel_row(result: Result) -> str | None:
    """``guest`` or ``expectations`` for the matrix's own rows, None for a pair."""
    return KERNEL_ROWS.get((result.id, result.memory))


def safe(text: str) -> str:
    """``text`` in letters, digits, '-', '_' and '.' only (LAVA's test case ids; a KCIDB
    path node takes the same but '.')."""
    text = re.sub(r"[:/,=]+", "-", text)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("-_.") or "_"


def kernel_labels(specs: Sequence[str]) -> list[str]:
    """Each matrix spec as a safe name, told apart when two read alike."""
    labels: list[str] = []
    for spec in specs:
        name = safe(spec)
        candidate, number = name, 1
        while candidate in labels:
            number += 1
            candidate = f"{name}-{number}"
        labels.append(candidate)
    return labels
