"""Test helpers shared by the suite. Fixtures (uffd, uffd_factory, region_factory,
hugepages, kernel, uffd_features) come from the project's own pytest plugin."""

from __future__ import annotations

import os

from uffdharness.abi import PASSIVE_FEATURES
from uffdharness.memory import MemoryKind

ALL_KINDS = [kind.value for kind in MemoryKind if kind is not MemoryKind.FILE]

__all__ = ["ALL_KINDS", "PASSIVE_FEATURES", "open_fds"]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


pytest_plugins = ["pytester"]
