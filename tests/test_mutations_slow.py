"""One mutation of the suite for real: Debian's 7.3 source built from tinyconfig and the
catalogue's fragment, then the same tree with `exact-address-masked` (every fault address
masked to its page, EXACT_ADDRESS or not), both booted in qemu with the whole catalogue.
exact-address must fail on the mutated kernel and every other verdict must stay.

Opt-in (UFFDHARNESS_KBUILD=1): a cold build of 7.3 takes about 6 minutes on 2 cores (plus
~170 MB of download), the mutated kernel about 1 more, each guest about 1.
`uffdharness mutations` runs the whole suite the same way.
"""

from __future__ import annotations

import json
import os

import pytest

from uffdharness.cli import main

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("UFFDHARNESS_KBUILD") != "1",
        reason="builds and boots two kernels (~10 minutes on 2 cores); set UFFDHARNESS_KBUILD=1",
    ),
    pytest.mark.timeout(3600),
]


def test_the_exact_address_mutation_is_caught_by_exact_address_alone(tmp_path, capsys):
    report = tmp_path / "mutations.json"
    status = main(["mutations", "-k", "exact-address-masked", "--quiet", "--json", str(report)])
    out = capsys.readouterr().out
    document = json.loads(report.read_text())
    (outcome,) = document["mutations"]
    assert outcome["caught"] and {c["pair"] for c in outcome["caught"]} == {"exact-address[anon]"}
    assert outcome["escaped"] == [] and outcome["unrelated"] == [], out
    assert status == 0 and "1 of 1 mutations caught" in out
