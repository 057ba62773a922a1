"""Shared fixtures: real userfaultfds, regions of each kind, a hugepage reservation."""

from __future__ import annotations

import os

import pytest

from uffdharness.abi import Feature
from uffdharness.hugepages import HugepageError, HugepagePool
from uffdharness.memory import MemoryKind, allocate
from uffdharness.uffd import Userfaultfd, probe_api

ALL_KINDS = [kind.value for kind in MemoryKind if kind is not MemoryKind.FILE]

# Features that change nothing unless a test asks for it: no EVENT_* (they block the
# triggering syscall until read), no SIGBUS, no WP_ASYNC, no EXACT_ADDRESS.
PASSIVE_FEATURES = (
    Feature.PAGEFAULT_FLAG_WP
    | Feature.MISSING_HUGETLBFS
    | Feature.MISSING_SHMEM
    | Feature.MINOR_HUGETLBFS
    | Feature.MINOR_SHMEM
    | Feature.WP_HUGETLBFS_SHMEM
    | Feature.THREAD_ID
    | Feature.POISON
    | Feature.MOVE
)


def offered_features() -> Feature:
    return probe_api().features


@pytest.fixture
def uffd_factory():
    opened: list[Userfaultfd] = []

    def make(features: Feature = PASSIVE_FEATURES, **kwargs) -> Userfaultfd:
        missing = features & ~offered_features()
        if missing:
            pytest.skip(f"kernel lacks uffd feature(s) {missing!r}")
        uffd = Userfaultfd.open(features, **kwargs)
        opened.append(uffd)
        return uffd

    yield make
    for uffd in opened:
        uffd.close()


@pytest.fixture
def uffd(uffd_factory) -> Userfaultfd:
    return uffd_factory()


@pytest.fixture(scope="session")
def hugepages():
    """Eight 2 MiB hugepages for the session; skips with the reason when impossible."""
    if os.geteuid() != 0:
        pytest.skip("hugetlb tests need root to reserve hugepages via /proc/sys/vm/nr_hugepages")
    try:
        with HugepagePool(8) as pool:
            yield pool
    except HugepageError as exc:
        pytest.skip(f"cannot reserve 8 x 2 MiB hugepages: {exc}")


@pytest.fixture
def region_factory(request):
    regions = []

    def make(kind: str, pages: int, **kwargs):
        if MemoryKind(kind).is_hugetlb:
            request.getfixturevalue("hugepages")
        region = allocate(kind, pages, **kwargs)
        regions.append(region)
        return region

    yield make
    for region in regions:
        region.close()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))
