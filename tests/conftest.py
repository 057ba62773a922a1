"""Test helpers shared by the suite. Fixtures (uffd, uffd_factory, region_factory,
hugepages, kernel, uffd_features) come from the project's own pytest plugin."""

from __future__ import annotations

import os

from uffdharness.abi import PASSIVE_FEATURES
from uffdharness.scenarios.model import ALL_KINDS as GENERAL_KINDS

ALL_KINDS = list(GENERAL_KINDS)  # the huge-page kinds: tests/test_memory_huge_kinds.py

__all__ = ["ALL_KINDS", "PASSIVE_FEATURES", "open_fds"]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


pytest_plugins = ["pytester"]
