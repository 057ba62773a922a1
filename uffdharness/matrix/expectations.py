"""What each kernel of a matrix run must show, as data, and the check against its results.

A scenario judges one kernel by itself (pass / known-bug / fail ...). The matrix adds the
cross-kernel claims a CI run should pin down: which kernels carry a known bug, which pass,
and that a scenario needing something newer than the kernel skips and says why.

Two sources, one record type (``Expectation``):
- ``EXPECTATIONS``: written here, for behaviour (which kernels carry a known bug);
- ``declared_gates()``: derived from each scenario's declared requirements on each memory
  kind (``Scenario.requirements``: min_kernel, the release that added each feature its
  modes and declaration need, per-kind operation gates from the memory-kind table), the
  same data the runner's skip decision reads, so no gate is restated here.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..kernelversion import KernelVersion
from ..kernelversion import parse as parse_version
from ..memory import HUGETLB_NEVER_MERGES
from ..runner import Result
from ..scenarios.model import ALL_KINDS, HUGETLB_KINDS, SMALL_PAGE_KINDS, Scenario, Verdict
from ..scenarios.vma_merge import UFFD_MERGE_FIX


@dataclass(frozen=True)
class Expectation:
    """``scenario`` (an id or a glob) on ``memory`` kinds must give ``verdict`` on kernels
    in [since, before). ``facts`` must equal the result's facts of the same names. A
    ``skip`` must also carry a reason naming a kernel version or feature newer than the
    kernel (see ``reason_explained``).

    ``fixed_by``: the upstream fix whose release is this expectation's version boundary.
    A kernel that declares it carries that fix (a patched build) counts as past the
    boundary whatever its version: expectations for kernels ``before`` it do not apply
    to it, those ``since`` it do."""

    scenario: str
    memory: tuple[str, ...]
    verdict: Verdict
    why: str
    since: str | None = None
    before: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    fixed_by: str | None = None

    def applies(
        self, result: Result, version: KernelVersion, carried_fixes: Collection[str] = ()
    ) -> bool:
        if not fnmatch.fnmatchcase(result.id, self.scenario) or result.memory not in self.memory:
            return False
        past_fix = self.fixed_by is not None and self.fixed_by in carried_fixes
        if self.since is not None and version < parse_version(self.since) and not past_fix:
            return False
        return self.before is None or (version < parse_version(self.before) and not past_fix)

    @property
    def kernels(self) -> str:
        if self.since and self.before:
            return f"{self.since} <= kernel < {self.before}"
        if self.since:
            return f"kernel >= {self.since}"
        return f"kernel < {self.before}" if self.before else "every kernel"

    def kernels_for(self, carried_fixes: Collection[str] = ()) -> str:
        """``kernels``, saying so when it applies because the kernel carries the fix."""
        if self.fixed_by is not None and self.fixed_by in carried_fixes:
            return f"{self.kernels} or a kernel carrying '{self.fixed_by}'"
        return self.kernels


@dataclass(frozen=True)
class Violation:
    id: str
    memory: str
    expected: str  # "known-bug, vmas_after_unregister=3"
    observed: str  # "pass, vmas_after_unregister=2"
    why: str

    @property
    def name(self) -> str:
        return f"{self.id}[{self.memory}]"

    def __str__(self) -> str:
        return f"{self.name}: expected {self.expected}, got {self.observed} ({self.why})"

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "memory": self.memory,
            "expected": self.expected,
            "observed": self.observed,
            "why": self.why,
        }


_UFFD_MERGE = "'mm/uffd: allow vma to merge as much as possible' (6.4), not in Debian's 6.1"
_RWP = (
    "7.3 added read-write protection (CONFIG_USERFAULTFD_RWP, def_bool y on x86-64); "
    "rwp-swap is left out: it needs swap, which the guests have (zram) but a host column "
    "may lack"
)

EXPECTATIONS: tuple[Expectation, ...] = (
    # mmap 20 pages, register 0-9, unregister 5-9. Observed: 3 VMAs
    # on Debian 5.10 and 6.1, 2 on 6.12, 6.18 and 7.x.
    Expectation(
        "unregister-merge",
        SMALL_PAGE_KINDS,
        "known-bug",
        before="6.4",
        facts={"vmas_after_unregister": 3},
        why=f"buggy before {_UFFD_MERGE}: 0-4 uffd, 5-9, 10-19",
        fixed_by=UFFD_MERGE_FIX.fix,
    ),
    Expectation(
        "unregister-merge",
        SMALL_PAGE_KINDS,
        "pass",
        since="6.4",
        facts={"vmas_after_unregister": 2},
        why=f"fixed by {_UFFD_MERGE}: 0-4 uffd, 5-19",
        fixed_by=UFFD_MERGE_FIX.fix,
    ),
    Expectation(
        "unregister-merge",
        HUGETLB_KINDS,
        "pass",
        facts={"vmas_after_unregister": 3},
        why=HUGETLB_NEVER_MERGES,
    ),
    # mmap 20 pages, register 10-19, then 5-9. Observed: 3 VMAs on Debian 5.10 and 6.1,
    # 2 on 6.12 and 7.3 (and on 6.1 with the fix backported).
    Expectation(
        "register-merge",
        SMALL_PAGE_KINDS,
        "known-bug",
        before="6.4",
        facts={"vmas_after_second_register": 3},
        why=f"buggy before {_UFFD_MERGE}: 0-4, 5-9 uffd, 10-19 uffd",
        fixed_by=UFFD_MERGE_FIX.fix,
    ),
    Expectation(
        "register-merge",
        SMALL_PAGE_KINDS,
        "pass",
        since="6.4",
        facts={"vmas_after_second_register": 2},
        why=f"fixed by {_UFFD_MERGE}: 0-4, 5-19 uffd",
        fixed_by=UFFD_MERGE_FIX.fix,
    ),
    Expectation(
        "register-merge",
        HUGETLB_KINDS,
        "pass",
        facts={"vmas_after_second_register": 3},
        why=HUGETLB_NEVER_MERGES,
    ),
    Expectation(
        "api-probe",
        ("anon",),
        "pass",
        why="UFFDIO_API offers every bit the kernel's version must have; bits newer than "
        "the vendored UAPI are facts",
    ),
    *(
        Expectation(
            scenario_id,
            memory,
            "pass",
            since="7.3",
            why=_RWP,
        )
        for scenario_id, memory in (
            ("rwp-sync", ALL_KINDS),
            ("rwp-async", ALL_KINDS),
            ("rwp-set-mode", ALL_KINDS),
            ("rwp-lifetime", ALL_KINDS),
            ("rwp-handlers", ALL_KINDS),
            ("rwp-bad-inputs", ("anon", "hugetlb")),
            ("rwp-working-set", ("memfd", "hugetlb")),
        )
    ),
)


def declared_gates(catalogue: Iterable[Scenario]) -> list[Expectation]:
    """One skip expectation per scenario, memory kind and declared requirement."""
    return [
        Expectation(item.id, (kind,), "skip", before=gate.since, why=f"declared: {gate.reason}")
        for item in catalogue
        for kind in item.memory
        for gate in item.requirements(kind)
    ]


def all_expectations() -> list[Expectation]:
    from ..scenarios import CATALOGUE

    return [*EXPECTATIONS, *declared_gates(CATALOGUE.values())]


# Runner and scenario skip reasons name the release that brought what is missing:
# "needs kernel >= 6.7, running 6.1.192", "kernel lacks UFFD_FEATURE_WP_UNPOPULATED (added
# in 6.4)", "pagemap does not report uffd-wp (bit 57, added in 5.14)".
_RELEASE = re.compile(r"(?<![\d.])(\d+\.\d+(?:\.\d+)?)(?![\d.])")


def reason_explained(reason: str, version: KernelVersion) -> bool:
    """True when a skip reason names a kernel release newer than ``version``: the skip is
    then explained by the kernel's age, not by this machine (root, hugepages)."""
    return any(version < parse_version(release) for release in _RELEASE.findall(reason))


def _describe(verdict: str, facts: Mapping[str, Any], names: Iterable[str]) -> str:
    shown = [f"{name}={facts.get(name, '(absent)')}" for name in names]
    return ", ".join([verdict, *shown])


def check(
    version: KernelVersion,
    results: Sequence[Result],
    expectations: Sequence[Expectation] | None = None,
    carried_fixes: Collection[str] = (),
) -> tuple[int, list[Violation]]:
    """(number of expectations that applied, violations) for one kernel's results;
    ``carried_fixes``: the upstream fixes the kernel declares it carries."""
    expectations = all_expectations() if expectations is None else expectations
    applied = 0
    violations: list[Violation] = []
    for result in results:
        for expected in expectations:
            if not expected.applies(result, version, carried_fixes):
                continue
            applied += 1
            problem = _mismatch(expected, result, version)
            if problem:
                violations.append(
                    Violation(
                        result.id,
                        result.memory,
                        _describe(expected.verdict, expected.facts, expected.facts),
                        problem,
                        f"{expected.why}; applies to {expected.kernels_for(carried_fixes)}",
                    )
                )
    return applied, violations


def _mismatch(expected: Expectation, result: Result, version: KernelVersion) -> str | None:
    observed = _describe(result.verdict, result.facts, expected.facts)
    if result.verdict != expected.verdict:
        # the key repeats the facts already shown, so it only helps when none are
        detail = result.reason or ("" if expected.facts else result.key)
        return f"{observed}: {detail}" if detail else observed
    if any(result.facts.get(name) != value for name, value in expected.facts.items()):
        return observed
    if expected.verdict == "skip" and not reason_explained(result.reason, version):
        return f"skip with a reason naming nothing newer than {version}: {result.reason!r}"
    return None
