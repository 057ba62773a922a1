"""docs/selftest-coverage.md names, for every case of the kernel's userfaultfd selftests,
a scenario and memory kind that exist in the catalogue; no row is left without one."""

from __future__ import annotations

import re
from pathlib import Path

from uffdharness.scenarios import CATALOGUE

DOC = Path(__file__).resolve().parent.parent / "docs" / "selftest-coverage.md"
CELL = re.compile(r"`([a-z0-9-]+)` \[([a-z0-9-]+)\]")
UNIT_TESTS = {
    "register-ioctls", "zeropage", "move", "move-pmd", "move-pmd-split", "wp-fork",
    "wp-fork-with-event", "wp-fork-pin", "wp-fork-pin-with-event", "wp-unpopulated", "minor",
    "minor-wp", "minor-collapse", "rwp-async", "rwp-sync", "rwp-pagemap", "rwp-mprotect",
    "rwp-gup", "rwp-async-toggle", "rwp-close", "rwp-fork", "rwp-fork-pin", "rwp-swap-cow",
    "rwp-wp-exclusive", "sigbus", "sigbus-wp", "events", "events-wp", "poison", "mmap-changing",
}  # fmt: skip


def _rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| selftest") and "---" not in line:
            if not line.startswith(("| uffd-", "| selftest")):
                rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_every_row_names_existing_scenarios_on_their_kinds():
    rows = _rows()
    assert len(rows) > 100
    for row in rows:
        named = [cell for cell in row if CELL.search(cell)]
        assert named, f"no scenario in {row}"
        for scenario_id, kind in CELL.findall(named[0]):
            assert scenario_id in CATALOGUE, scenario_id
            assert kind in CATALOGUE[scenario_id].memory, (scenario_id, kind)
        assert "none" not in [cell.lower() for cell in row], row


def test_every_unit_test_of_the_selftests_has_rows():
    assert UNIT_TESTS <= {row[0] for row in _rows()}
