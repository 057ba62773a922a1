"""Kernel release strings parsed into comparable versions.

``KernelVersion`` orders by (major, minor, patch) only. The ``extra`` suffix ("-rc3",
"-27-amd64", "+deb13-amd64") never takes part in comparisons: a 7.2-rc kernel already
carries everything merged for 7.2 (features land in the merge window, before rc1), so for
gating checks on kernel versions "7.2.0-rc3 >= 7.2" is the useful answer.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = [
    "KernelVersion",
    "VersionLike",
    "parse",
    "upstream_from_proc_version",
]

_RELEASE_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(.*?)\s*$", re.S)

# Distribution kernels that keep ".0" in the release and put an ABI number after it:
# Debian "6.1.0-27-amd64", "5.10.0-0.deb10.16-amd64", Ubuntu "5.15.0-91-generic",
# "6.8.0-1015-aws". The "0" there is not the upstream patch level. Fedora's
# "6.11.0-63.fc41.x86_64" has no flavour after a second dash and its ".0" is real.
_ABI_SUFFIX_RE = re.compile(r"^-\d[0-9a-z.~+]*-[a-z]")

_RC_RE = re.compile(r"-rc(\d+)")

_SPEC_RE = re.compile(r"^\s*(==|!=|>=|<=|>|<)?\s*(\d+(?:\.(?:\d+|\*)){0,2})\s*$")

# Debian puts the upstream version of its package into `uname -v` / /proc/version:
# "#1 SMP PREEMPT_DYNAMIC Debian 6.1.123-1 (2025-01-02)". The compiler banner in the
# same line ("gcc-12 (Debian 12.2.0-14) 12.2.0") also says "Debian x.y.z", so the
# caller's major.minor decides which match is the kernel.
_DEBIAN_PKG_RE = re.compile(r"\bDebian (\d+)\.(\d+)\.(\d+)")


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class KernelVersion:
    """A kernel version: numeric (major, minor, patch) plus what the release string said.

    ``patch_known`` is False when the release string does not carry the upstream patch
    level (Debian/Ubuntu ABI-style ".0-27-amd64", or a vDSO value clamped at 255); then
    ``patch`` is 0 (or 255) and comparisons treat it as that number.
    Equality and ordering use only (major, minor, patch); tuples such as ``(6, 4)`` and
    strings such as ``"6.4"`` compare too (missing parts count as 0).
    """

    major: int
    minor: int
    patch: int = 0
    extra: str = ""
    release: str = ""
    patch_known: bool = True

    @property
    def triple(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    @property
    def rc(self) -> int | None:
        """The -rcN number of a mainline release candidate, else None."""
        match = _RC_RE.search(self.extra)
        return int(match.group(1)) if match else None

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def __hash__(self) -> int:
        return hash(self.triple)

    def __eq__(self, other: object) -> bool:
        other_triple = _coerce_triple(other)
        if other_triple is None:
            return NotImplemented
        return self.triple == other_triple

    def __lt__(self, other: object) -> bool:
        other_triple = _coerce_triple(other)
        if other_triple is None:
            return NotImplemented
        return self.triple < other_triple

    def with_patch(self, patch: int, *, known: bool = True) -> KernelVersion:
        """The same release with a corrected patch level."""
        return KernelVersion(self.major, self.minor, patch, self.extra, self.release, known)

    def matches(self, spec: str) -> bool:
        """True if this version satisfies every comma-separated clause of ``spec``.

        Clauses: ``>=6.4``, ``<6.1``, ``>6.1.50``, ``<=6.12``, ``!=6.8``, ``==6.12.44``,
        ``==6.12.*`` (prefix match), ``6.12`` (same as ``==6.12``). Missing components of a
        non-wildcard clause count as 0, so ``==6.12`` means 6.12.0.
        """
        clauses = [clause for clause in spec.split(",") if clause.strip()]
        if not clauses:
            raise ValueError(f"empty kernel version spec: {spec!r}")
        return all(self._matches_clause(clause) for clause in clauses)

    def _matches_clause(self, clause: str) -> bool:
        match = _SPEC_RE.match(clause)
        if match is None:
            raise ValueError(f"bad kernel version spec clause: {clause!r}")
        op = match.group(1) or "=="
        parts = match.group(2).split(".")
        if "*" in parts:
            if parts.index("*") != len(parts) - 1 or op not in ("==", "!="):
                raise ValueError(f"wildcard only allowed last with == or !=: {clause!r}")
            prefix = tuple(int(part) for part in parts[:-1])
            equal = self.triple[: len(prefix)] == prefix
            return equal if op == "==" else not equal
        wanted = _pad(tuple(int(part) for part in parts))
        return {
            "==": self.triple == wanted,
            "!=": self.triple != wanted,
            ">=": self.triple >= wanted,
            "<=": self.triple <= wanted,
            ">": self.triple > wanted,
            "<": self.triple < wanted,
        }[op]

    def to_json(self) -> dict[str, object]:
        return {
            "version": str(self),
            "major": self.major,
            "minor": self.minor,
            "patch": self.patch,
            "patch_known": self.patch_known,
            "extra": self.extra,
            "release": self.release,
        }


VersionLike = KernelVersion | str | tuple[int, ...]


def parse(release: str) -> KernelVersion:
    """Parse a ``uname -r`` style release string ("6.18.44-fc-v595", "6.1.0-27-amd64")."""
    match = _RELEASE_RE.match(release)
    if match is None:
        raise ValueError(f"not a kernel release string: {release!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    patch = int(match.group(3)) if match.group(3) is not None else 0
    extra = match.group(4)
    patch_known = not (patch == 0 and _ABI_SUFFIX_RE.match(extra))
    return KernelVersion(major, minor, patch, extra, release.strip(), patch_known)


def upstream_from_proc_version(
    proc_version: str, release: str | None = None
) -> KernelVersion | None:
    """The upstream version Debian records in /proc/version (or ``uname -v``), if any.

    ``release`` is the ``uname -r`` string; when omitted it is taken from a
    "Linux version <release>" prefix. Returns the release parsed with the patch level
    replaced by Debian's package version ("Debian 6.1.123-1" -> 6.1.123), or None when
    the text names no Debian package of the same major.minor.
    """
    if release is None:
        head = re.match(r"\s*Linux version (\S+)", proc_version)
        if head is None:
            return None
        release = head.group(1)
    base = parse(release)
    candidates = [
        (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        for m in _DEBIAN_PKG_RE.finditer(proc_version)
    ]
    for major, minor, patch in reversed(candidates):
        if (major, minor) == (base.major, base.minor):
            return base.with_patch(patch)
    return None


def _pad(parts: tuple[int, ...]) -> tuple[int, int, int]:
    padded = (tuple(parts) + (0, 0, 0))[:3]
    return (padded[0], padded[1], padded[2])


def _coerce_triple(other: object) -> tuple[int, int, int] | None:
    if isinstance(other, KernelVersion):
        return other.triple
    if isinstance(other, str):
        try:
            return parse(other).triple
        except ValueError:
            return None
    if (
        isinstance(other, tuple)
        and 1 <= len(other) <= 3
        and all(isinstance(part, int) for part in other)
    ):
        return _pad(other)
    return None
