"""What a scenario is: declared data plus one function, and what it returns.

A scenario declares everything that decides whether it can run: the register modes it
uses (their features per memory kind come from the memory-kind table), the features it
needs besides, a minimum kernel, the operations whose kernel support differs by kind, and
whether its faults are raised by the kernel's own accesses. ``Scenario.requirements``
turns that into version gates, which serve both the runner's skip (before any fork) and
the matrix's skip expectations; privileges (a feature's capability, kernel-mode faults)
are judged against this process's ``Privileges``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..abi import (
    FEATURE_SINCE,
    Feature,
    RegisterMode,
    capabilities_needed,
    flag_names,
    missing_features,
    missing_features_reason,
)
from ..kernelversion import KernelVersion
from ..kernelversion import parse as parse_version
from ..memory import PMD_THP_KINDS, SPECS, kinds_where
from ..system import Privileges

Verdict = Literal["pass", "known-bug", "fail", "skip", "error", "hang"]
VERDICTS: tuple[Verdict, ...] = ("pass", "known-bug", "fail", "skip", "error", "hang")
BAD_VERDICTS = frozenset({"fail", "error", "hang"})

ALL_KINDS = kinds_where(lambda spec: True)
SMALL_PAGE_KINDS = kinds_where(lambda spec: not spec.is_hugetlb)
HUGETLB_KINDS = kinds_where(lambda spec: spec.is_hugetlb)
SHARED_KINDS = kinds_where(lambda spec: spec.shared)
PRIVATE_KINDS = kinds_where(lambda spec: not spec.shared)
MINOR_KINDS = kinds_where(lambda spec: spec.supports(RegisterMode.MINOR))
# Not general: listed by the scenarios where huge pages change what the kernel does.
THP_KINDS = PMD_THP_KINDS


class Skip(Exception):
    """Raised by a scenario that cannot run here; the message is the precise reason."""


def capability_reason(features: Feature, capabilities: frozenset[str]) -> str | None:
    """Why UFFDIO_API would refuse ``features`` to a process holding ``capabilities``."""
    lacking = {
        name: capability
        for name, capability in capabilities_needed(features).items()
        if capability not in capabilities
    }
    if not lacking:
        return None
    needs = ", ".join(f"UFFD_FEATURE_{name} needs {cap}" for name, cap in lacking.items())
    return f"{needs} (UFFDIO_API refuses it with EPERM), which this process lacks"


class Matcher:
    """A fact value a known bug's signature accepts other than by equality."""

    def __call__(self, value: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class NonEmpty(Matcher):
    def __call__(self, value: Any) -> bool:
        return bool(value)

    def __str__(self) -> str:
        return "non-empty"


@dataclass(frozen=True)
class AtLeast(Matcher):
    bound: int

    def __call__(self, value: Any) -> bool:
        return isinstance(value, int) and value >= self.bound

    def __str__(self) -> str:
        return f">= {self.bound}"


@dataclass(frozen=True)
class Every(Matcher):
    """A non-empty mapping whose every value equals ``value``."""

    value: Any

    def __call__(self, value: Any) -> bool:
        return (
            isinstance(value, Mapping)
            and bool(value)
            and all(item == self.value for item in value.values())
        )

    def __str__(self) -> str:
        return f"every value {self.value!r}"


def fact_at(facts: Mapping[str, Any], path: str) -> Any:
    """The fact at a dotted ``path`` ("without_event_fork.child_wp_pages"), None if absent."""
    value: Any = facts
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _matches(value: Any, wanted: Any) -> bool:
    return wanted(value) if isinstance(wanted, Matcher) else value == wanted


@dataclass(frozen=True)
class KnownBug:
    """A documented kernel bug: which kernels carry the fix and what the bug looks like.

    ``shows`` is the signature as data: alternatives, each a map of fact paths to the value
    (or Matcher) a buggy kernel shows. A failing observation is the known bug only when one
    alternative matches it whole on one of the ``memory`` kinds the bug can affect.
    """

    fixed_in: str  # mainline release, e.g. "6.4"
    fix: str  # the fix's subject line
    signature: str  # what a buggy kernel shows, in words
    backports: tuple[str, ...] = ()  # stable releases carrying the fix, e.g. "6.12.11"
    shows: tuple[Mapping[str, Any], ...] = ()
    memory: tuple[str, ...] | None = None  # None: every kind

    def showing(self, *alternatives: Mapping[str, Any], **facts: Any) -> KnownBug:
        """This bug with its signature in one scenario's facts."""
        shows = tuple(alternatives) + ((facts,) if facts else ())
        return replace(self, shows=shows)

    def shown_by(self, facts: Mapping[str, Any], memory: str) -> bool:
        if self.memory is not None and memory not in self.memory:
            return False
        return any(
            all(_matches(fact_at(facts, path), wanted) for path, wanted in alternative.items())
            for alternative in self.shows
        )

    def fixed_on(self, kernel: KernelVersion, carried_fixes: Collection[str] = ()) -> bool:
        """Whether ``kernel`` has the fix: by version, by a stable backport, or because it
        declares it carries the fix (a patched build, ``--carries-fix``)."""
        if self.fix in carried_fixes or kernel >= parse_version(self.fixed_in):
            return True
        for release in self.backports:
            backport = parse_version(release)
            same_series = (kernel.major, kernel.minor) == (backport.major, backport.minor)
            if same_series and kernel.patch_known and kernel.patch >= backport.patch:
                return True
        return False


@dataclass
class Observation:
    """What the kernel did. ``ok``: it behaved as a fixed kernel should; otherwise
    ``reason`` names what differed."""

    facts: dict[str, Any]
    ok: bool
    key: str
    reason: str = ""


@dataclass(frozen=True)
class Gate:
    """A requirement met on kernels from ``since`` on; ``reason`` says what needs it."""

    since: str
    reason: str


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    checks: str  # one sentence naming the kernel change or bug
    run: Callable[[Any], Observation] = field(repr=False)
    memory: tuple[str, ...] = ("anon",)
    modes: RegisterMode = RegisterMode(0)  # every register mode the scenario needs
    # Register modes the scenario tries only where the kind has them and the kernel offers
    # their features, expecting UFFDIO_REGISTER to refuse them elsewhere: they gate nothing.
    probes: RegisterMode = RegisterMode(0)
    features: Feature = Feature(0)  # needed on every memory kind, besides the modes'
    min_kernel: str | None = None
    uses: tuple[str, ...] = ()  # operations gated per kind in the table: "mremap", "zap", "drop"
    # What makes the kernel itself fault on registered memory (a syscall reading or writing
    # it, UFFDIO_COPY from it): such faults reach only a uffd opened without
    # UFFD_USER_MODE_ONLY. "" when every fault comes from a user-mode access.
    kernel_faults: str = ""
    needs_root: bool = False
    timeout: float | None = None  # seconds, when shorter than the run's --timeout
    hugepages: int = 4  # hugetlb pages a hugetlb run of this scenario maps at most
    known_bug: KnownBug | None = None

    def __post_init__(self) -> None:
        for kind in self.memory:
            if not SPECS[kind].supports(self.modes):
                raise ValueError(f"{self.id}: {kind} memory does not support {self.modes!r}")

    def features_on(self, kind: str) -> Feature:
        """Every feature bit this scenario needs on ``kind``: its own and its modes'."""
        return self.features | SPECS[kind].mode_features(self.modes)

    def _version_gates(self, kind: str) -> tuple[list[Gate], list[Gate]]:
        """(the declared minimum kernel, the per-kind operation gates of ``kind``)."""
        minimum = []
        if self.min_kernel:
            minimum.append(Gate(self.min_kernel, f"needs kernel >= {self.min_kernel}"))
        operations = []
        since = SPECS[kind].since
        if since:
            operations.append(
                Gate(since.since, f"{kind} memory needs kernel >= {since.since} ({since.change})")
            )
        for operation in self.uses:
            gate = SPECS[kind].gates.get(operation)
            if gate:
                needs = f"needs kernel >= {gate.since} ({gate.change})"
                operations.append(Gate(gate.since, f"{operation} on {kind} memory {needs}"))
        return minimum, operations

    def requirements(self, kind: str) -> list[Gate]:
        """The kernel releases this scenario needs on ``kind``, each with what needs it."""
        minimum, operations = self._version_gates(kind)
        features = []
        for name in flag_names(self.features_on(kind)):
            major, minor = FEATURE_SINCE.get(Feature[name], (0, 0))
            if (major, minor) > (0, 0):
                since = f"{major}.{minor}"
                features.append(Gate(since, f"UFFD_FEATURE_{name} (added in {since})"))
        return minimum + features + operations

    def skip_reason(
        self,
        kernel: KernelVersion,
        offered: Feature,
        is_root: bool,
        kind: str = "anon",
        *,
        privileges: Privileges | None = None,
    ) -> str | None:
        """Features are judged by what the kernel offers (a backport counts), the other
        gates by its version; capabilities and kernel-mode faults by ``privileges`` (None:
        every privilege)."""
        minimum, operations = self._version_gates(kind)
        features = self.features_on(kind)
        missing = missing_features(features, offered)
        for gate in minimum:
            if kernel < parse_version(gate.since):
                return f"{gate.reason}, running {kernel}"
        if missing:
            return missing_features_reason(missing)
        for gate in operations:
            if kernel < parse_version(gate.since):
                return f"{gate.reason}, running {kernel}"
        if privileges is not None:
            refused = capability_reason(features, privileges.capabilities)
            if refused:
                return refused
            if self.kernel_faults and privileges.kernel_faults_refusal:
                return (
                    f"needs kernel-mode faults ({self.kernel_faults}); "
                    f"{privileges.kernel_faults_refusal}"
                )
        if self.needs_root and not is_root:
            return "needs root"
        return None
