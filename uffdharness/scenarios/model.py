"""What a scenario is: declared data plus one function, and what it returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..abi import FEATURE_SINCE, Feature, flag_names
from ..kernelversion import KernelVersion
from ..kernelversion import parse as parse_version

Verdict = Literal["pass", "known-bug", "fail", "skip", "error", "hang"]
VERDICTS: tuple[Verdict, ...] = ("pass", "known-bug", "fail", "skip", "error", "hang")
BAD_VERDICTS = frozenset({"fail", "error", "hang"})

SMALL_PAGE_KINDS = ("anon", "shmem", "memfd")
HUGETLB_KINDS = ("hugetlb", "hugetlb-private")
ALL_KINDS = SMALL_PAGE_KINDS + HUGETLB_KINDS
SHARED_KINDS = ("shmem", "memfd", "hugetlb")


class Skip(Exception):
    """Raised by a scenario that cannot run here; the message is the precise reason."""


@dataclass(frozen=True)
class KnownBug:
    """A documented kernel bug: which kernels carry the fix and what the bug looks like."""

    fixed_in: str  # mainline release, e.g. "6.4"
    fix: str  # the fix's subject line
    signature: str  # what a buggy kernel shows, in words
    backports: tuple[str, ...] = ()  # stable releases carrying the fix, e.g. "6.12.11"

    def fixed_on(self, kernel: KernelVersion) -> bool:
        if kernel >= parse_version(self.fixed_in):
            return True
        for release in self.backports:
            backport = parse_version(release)
            same_series = (kernel.major, kernel.minor) == (backport.major, backport.minor)
            if same_series and kernel.patch_known and kernel.patch >= backport.patch:
                return True
        return False


@dataclass
class Observation:
    """What the kernel did. ``ok``: it behaved as a fixed kernel should. ``buggy``: the
    observation matches the scenario's known-bug signature."""

    facts: dict[str, Any]
    ok: bool
    key: str
    reason: str = ""
    buggy: bool = False


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    checks: str  # one sentence naming the kernel change or bug
    run: Callable[[Any], Observation] = field(repr=False)
    memory: tuple[str, ...] = ("anon",)
    features: Feature = Feature(0)  # needed on every memory kind
    min_kernel: str | None = None
    needs_root: bool = False
    timeout: float | None = None  # seconds; None: the runner's default
    hugepages: int = 4  # 2 MiB pages a hugetlb run of this scenario maps at most
    known_bug: KnownBug | None = None

    def skip_reason(self, kernel: KernelVersion, offered: Feature, is_root: bool) -> str | None:
        if self.min_kernel and kernel < parse_version(self.min_kernel):
            return f"needs kernel >= {self.min_kernel}, running {kernel}"
        missing = Feature(int(self.features) & ~int(offered))
        if missing:
            return missing_features_reason(missing)
        if self.needs_root and not is_root:
            return "needs root"
        return None


def missing_features_reason(missing: Feature) -> str:
    parts = []
    for name in flag_names(missing):
        since = FEATURE_SINCE.get(Feature[name]) if name in Feature.__members__ else None
        added = f" (added in {since[0]}.{since[1]})" if since else ""
        parts.append(f"UFFD_FEATURE_{name}{added}")
    return "kernel lacks " + ", ".join(parts)
