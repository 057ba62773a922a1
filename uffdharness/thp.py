"""Transparent huge page policy knobs under /sys/kernel/mm/transparent_hugepage, and a
context manager that switches one on for a run and puts the old value back.

Kernel semantics (Documentation/admin-guide/mm/transhuge.rst):

- ``enabled`` (always/madvise/never) governs PMD-sized anonymous THPs; ``madvise`` grants
  them to VMAs with MADV_HUGEPAGE. ``shmem_enabled`` governs the internal shmem mount that
  memfd_create and MAP_SHARED|MAP_ANONYMOUS use; ``advise`` grants huge pages to
  MADV_HUGEPAGE mappings, while ``deny`` and ``force`` are emergency/testing overrides.
- From 6.8 each size has ``hugepages-<size>kB/enabled`` (always/inherit/madvise/never;
  "inherit" follows the top-level knob), from 6.11 ``shmem_enabled`` likewise. Sizes below
  the PMD size are the multi-size THPs (mTHP): PTE-mapped large folios.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .hugepages import signals_deferred

SYSFS_THP = "/sys/kernel/mm/transparent_hugepage"
_SIZE_DIR_RE = re.compile(r"^hugepages-(\d+)kB$")


def _bracketed(text: str) -> str | None:
    match = re.search(r"\[([^\]]+)\]", text)
    return match.group(1) if match else (text.strip() or None)


def read_knob(path: str) -> str | None:
    """The selected value of a sysfs knob ("always [madvise] never" -> "madvise")."""
    try:
        with open(path) as knob:
            return _bracketed(knob.read())
    except OSError:
        return None


def available() -> bool:
    """Whether the kernel has transparent huge pages (CONFIG_TRANSPARENT_HUGEPAGE)."""
    return os.path.isfile(os.path.join(SYSFS_THP, "enabled"))


def size_dir(size: int) -> str:
    return os.path.join(SYSFS_THP, f"hugepages-{size >> 10}kB")


def folio_sizes() -> list[int]:
    """Sizes (bytes) with a per-size ``enabled`` knob, ascending; [] before 6.8."""
    try:
        names = os.listdir(SYSFS_THP)
    except OSError:
        return []
    found = []
    for name in names:
        match = _SIZE_DIR_RE.match(name)
        if match and os.path.isfile(os.path.join(SYSFS_THP, name, "enabled")):
            found.append(int(match.group(1)) << 10)
    return sorted(found)


def mthp_sizes(pmd: int) -> list[int]:
    """The multi-size THP sizes (below the PMD size ``pmd``) the kernel offers."""
    return [size for size in folio_sizes() if size < pmd]


@dataclass(frozen=True)
class Knob:
    """One sysfs knob a memory kind needs: its value must be one of ``accepts``;
    otherwise a root run writes ``sets`` and restores the old value afterwards."""

    path: str
    accepts: frozenset[str]
    sets: str

    def satisfied(self) -> bool:
        return read_knob(self.path) in self.accepts


@contextlib.contextmanager
def switched(knobs: list[Knob]) -> Iterator[None]:
    """Write each unsatisfied knob's value for the block; the old values come back on any
    exit (a SIGKILL leaves them switched: ``uffdharness info`` shows the THP modes)."""
    changed: list[tuple[str, str]] = []
    try:
        with signals_deferred():
            for knob in knobs:
                old = read_knob(knob.path)
                if old is None or old in knob.accepts:
                    continue
                with open(knob.path, "w") as sysfs:
                    sysfs.write(knob.sets)
                changed.append((knob.path, old))
        yield
    finally:
        with signals_deferred():
            for path, old in reversed(changed):
                with contextlib.suppress(OSError), open(path, "w") as sysfs:
                    sysfs.write(old)
