"""pytest plugin: fixtures and markers for writing kernel checks, and the catalogue as items.

Registered through the ``pytest11`` entry point, so it is active wherever uffdharness is
installed. Fixtures: ``kernel``, ``uffd_features``, ``uffd``, ``uffd_factory``,
``region_factory``, ``hugepages``, ``fault_handler``. Markers:

- ``requires_kernel(">=6.4")``: skip unless the running kernel matches the spec.
- ``requires_feature("MOVE", ...)``: skip unless UFFDIO_API offers these features.
- ``requires_root``: skip unless euid 0.
- ``requires_hugepages(n)``: reserve n default-size hugepages for the test (skip if impossible).

``pytest --uffd-catalogue`` adds one item per catalogue scenario x memory kind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from . import system
from .abi import PASSIVE_FEATURES, Feature, missing_features, missing_features_reason
from .hugepages import HugepageError, HugepagePool
from .kernelversion import KernelVersion
from .memory import MemoryKind, Region, allocate
from .uffd import Userfaultfd

MARKERS = {
    "requires_kernel(spec)": "skip unless the running kernel matches spec, e.g. '>=6.4'",
    "requires_feature(*names)": "skip unless UFFDIO_API offers these features, e.g. 'MOVE'",
    "requires_root": "skip unless running as root",
    "requires_hugepages(n)": "reserve n default-size hugepages; skip if impossible",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("uffdharness")
    group.addoption(
        "--uffd-catalogue",
        action="store_true",
        help="also run the uffdharness scenario catalogue as test items",
    )
    group.addoption(
        "--uffd-timeout",
        type=float,
        default=30.0,
        help="seconds per catalogue scenario before it counts as a hang",
    )


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {text}")


def _kernel() -> KernelVersion:
    return system.facts().kernel


def _offered() -> Feature:
    return system.facts().offered


def _requirement_skip(item: pytest.Item) -> str | None:
    for marker in item.iter_markers("requires_kernel"):
        spec = marker.args[0]
        kernel = _kernel()
        if not kernel.matches(spec):
            return f"needs kernel {spec}, running {kernel}"
    for marker in item.iter_markers("requires_feature"):
        wanted = Feature(0)
        for name in marker.args:
            wanted |= Feature[name]
        missing = missing_features(wanted, _offered())
        if missing:
            return missing_features_reason(missing)
    if item.get_closest_marker("requires_root") and os.geteuid() != 0:
        return "needs root"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = _requirement_skip(item)
    if reason:
        pytest.skip(reason)
    marker = item.get_closest_marker("requires_hugepages")
    if marker is not None:
        count = int(marker.args[0]) if marker.args else 1
        if os.geteuid() != 0:
            pytest.skip(f"needs root to reserve {count} hugepages via /proc/sys/vm/nr_hugepages")
        pool = HugepagePool(count)
        try:
            pool.__enter__()
        except HugepageError as exc:
            pytest.skip(f"cannot reserve {count} hugepages: {exc}")
        item.stash[_POOL_KEY] = pool


_POOL_KEY = pytest.StashKey[HugepagePool]()


def pytest_runtest_teardown(item: pytest.Item) -> None:
    pool = item.stash.get(_POOL_KEY, None)
    if pool is not None:
        pool.release()


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kernel() -> KernelVersion:
    """The running kernel's version (upstream patch level where the distribution says it)."""
    return _kernel()


@pytest.fixture(scope="session")
def uffd_features() -> Feature:
    """Every feature UFFDIO_API offers on this kernel."""
    return _offered()


@pytest.fixture
def uffd_factory() -> Iterator:
    """``make(features=PASSIVE_FEATURES, **open_kwargs)``: open userfaultfds, closed after."""
    opened: list[Userfaultfd] = []

    def make(features: Feature = PASSIVE_FEATURES, **kwargs) -> Userfaultfd:
        missing = missing_features(features, _offered())
        if missing:
            pytest.skip(missing_features_reason(missing))
        uffd = Userfaultfd.open(features, **kwargs)
        opened.append(uffd)
        return uffd

    yield make
    for uffd in opened:
        uffd.close()


@pytest.fixture
def uffd(uffd_factory) -> Userfaultfd:
    """A userfaultfd with every feature that changes nothing unless used."""
    return uffd_factory()


@pytest.fixture(scope="session")
def hugepages() -> Iterator[HugepagePool]:
    """Eight hugepages (the default size) for the session; skips with the reason when impossible."""
    if os.geteuid() != 0:
        pytest.skip("hugetlb needs root to reserve hugepages via /proc/sys/vm/nr_hugepages")
    try:
        with HugepagePool(8) as pool:
            yield pool
    except HugepageError as exc:
        pytest.skip(f"cannot reserve 8 hugepages: {exc}")


@pytest.fixture
def region_factory(request: pytest.FixtureRequest) -> Iterator:
    """``make(kind, pages, **allocate_kwargs)``: regions between guard pages, unmapped after.
    Hugetlb kinds pull in the session's hugepage reservation."""
    regions: list[Region] = []

    def make(kind: str | MemoryKind, pages: int, **kwargs) -> Region:
        if (
            MemoryKind(kind).is_hugetlb
            and request.node.get_closest_marker("requires_hugepages") is None
        ):
            request.getfixturevalue("hugepages")
        region = allocate(kind, pages, **kwargs)
        regions.append(region)
        return region

    yield make
    for region in regions:
        region.close()


@pytest.fixture
def fault_handler() -> Iterator:
    """``start(uffd, policy, regions, engine="native", **options)``: a started FaultHandler,
    stopped at teardown; a policy's exception is re-raised there and fails the test."""
    from .handler import FaultHandler

    started: list[FaultHandler] = []

    def start(uffd: Userfaultfd, policy=None, regions=(), **options) -> FaultHandler:
        handler = FaultHandler(uffd, policy, regions, **options)
        handler.start()
        started.append(handler)
        return handler

    yield start
    for handler in reversed(started):
        if handler.running:
            handler.stop()


# --- the catalogue as items ---------------------------------------------------------------------


class CatalogueItem(pytest.Item):
    def __init__(self, *, scenario, memory: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.memory = memory

    def runtest(self) -> None:
        from .kindsetup import KindSetup
        from .runner import run_pair

        info = system.facts()
        timeout = self.config.getoption("--uffd-timeout")
        needs = [(self.memory, self.scenario.hugepages)]
        with KindSetup(needs, info.is_root) as setup:
            kind_skip = setup.skip_reason(self.memory)
            result = run_pair(self.scenario, self.memory, info, timeout, kind_skip)
        self.user_properties.append(("verdict", result.verdict))
        self.user_properties.append(("facts", json.dumps(result.facts, default=str)))
        if result.verdict == "skip":
            pytest.skip(result.reason)
        if result.verdict not in ("pass", "known-bug"):
            raise CatalogueFailure(result)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CatalogueFailure):
            result = excinfo.value.result
            facts = json.dumps(result.facts, indent=2, default=str)
            return f"{result.verdict}: {result.reason}\nfacts: {facts}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return "uffdharness-catalogue", None, f"{self.scenario.id}[{self.memory}]"


class CatalogueFailure(Exception):
    def __init__(self, result) -> None:
        super().__init__(result.reason)
        self.result = result


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection, so they apply to these items
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if not config.getoption("--uffd-catalogue"):
        return
    from .scenarios import CATALOGUE

    for scenario in CATALOGUE.values():
        for memory in scenario.memory:
            items.append(
                CatalogueItem.from_parent(
                    session,
                    name=f"catalogue::{scenario.id}[{memory}]",
                    scenario=scenario,
                    memory=memory,
                )
            )
