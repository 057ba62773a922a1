"""What a scenario function receives: the memory kind, the system facts, and resource helpers.

A scenario runs in a forked child that exits afterwards, so whatever it maps or opens
goes away with the child; the helpers still close what they made, for use outside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..abi import Feature, RegisterMode
from ..defaults import DEFAULT_TIMEOUT
from ..errors import HarnessError
from ..events import Event
from ..kernelversion import KernelVersion
from ..memory import KindSpec, MemoryKind, Region, allocate
from ..system import SystemFacts, swap_total_kb
from ..uffd import Userfaultfd
from .model import Skip, capability_reason, missing_features, missing_features_reason

RELEASE_GRACE_S = 5.0  # for threads woken by the close of their uffd to finish their access


@dataclass
class Context:
    memory: MemoryKind
    system: SystemFacts
    modes: RegisterMode = RegisterMode(0)  # the register modes the scenario declared
    timeout: float = DEFAULT_TIMEOUT  # seconds the runner gives it before calling it a hang
    probes: RegisterMode = RegisterMode(0)  # the modes it declared it tries where offered
    _regions: list[Region] = field(default_factory=list)
    _uffds: list[Userfaultfd] = field(default_factory=list)

    @property
    def kernel(self) -> KernelVersion:
        return self.system.kernel

    @property
    def offered(self) -> Feature:
        return self.system.offered

    @property
    def spec(self) -> KindSpec:
        return self.memory.spec

    @property
    def page_size(self) -> int:
        return self.memory.page_size

    def require(self, features: Feature) -> None:
        missing = missing_features(features, self.offered)
        if missing:
            raise Skip(missing_features_reason(missing))

    def require_swap(self) -> None:
        """Skip unless a swap device is on: MADV_PAGEOUT then leaves swap entries."""
        if swap_total_kb() == 0:
            raise Skip("no swap: SwapTotal is 0 in /proc/meminfo, MADV_PAGEOUT cannot swap out")

    def mode_features(self, modes: RegisterMode) -> Feature:
        """Features ``modes`` need on this memory kind. The scenario must have declared
        them (``modes=`` of @scenario), so the runner checked them before forking."""
        undeclared = RegisterMode(int(modes) & ~int(self.modes))
        if undeclared:
            raise HarnessError(f"scenario registers {undeclared!r} without declaring it")
        return self.spec.mode_features(modes)

    def probe_features(self, modes: RegisterMode) -> Feature | None:
        """Features ``modes`` need on this memory kind, or None where the kind lacks one of
        them or the kernel lacks one of their features: there UFFDIO_REGISTER must refuse
        ``modes`` (EINVAL). The scenario must have declared them (``modes=`` or
        ``probes=`` of @scenario)."""
        undeclared = RegisterMode(int(modes) & ~int(self.modes | self.probes))
        if undeclared:
            raise HarnessError(f"scenario probes {undeclared!r} without declaring it")
        if not self.spec.supports(modes):
            return None
        needed = self.spec.mode_features(modes)
        return None if missing_features(needed, self.offered) else needed

    def region(self, pages: int, kind: MemoryKind | str | None = None, **kwargs: Any) -> Region:
        region = allocate(kind or self.memory, pages, **kwargs)
        self._regions.append(region)
        return region

    def uffd(self, features: Feature = Feature(0), **kwargs: Any) -> Userfaultfd:
        """A uffd with ``features``: a Skip if the kernel lacks one or this process lacks
        the capability one needs; opened with UFFD_USER_MODE_ONLY where that is the only
        way this process gets a uffd (the runner skipped what needs kernel-mode faults)."""
        self.require(features)
        refused = capability_reason(features, self.system.privileges.capabilities)
        if refused:
            raise Skip(refused)
        kwargs.setdefault("user_mode_only", self.system.user_mode_only)
        uffd = Userfaultfd.open(features, **kwargs)
        self._uffds.append(uffd)
        return uffd

    def close(self) -> None:
        """Close the uffds, let every Background call finish, then unmap the regions.

        The order matters on a kernel that misbehaves: a thread it never woke is still
        asleep in handle_userfault(). Closing the last reference to its uffd wakes it
        (userfaultfd_release) and it retries its access; unmapping before that retry would
        turn a ``fail`` into a SIGSEGV that loses every fact. A thread still blocked after
        the grace period keeps its memory mapped: the scenario's process exits anyway.
        """
        for uffd in self._uffds:
            uffd.close()
        if not Background.join_all(RELEASE_GRACE_S):
            return
        for region in reversed(self._regions):
            if not region.closed:
                region.close()


class Background:
    """Run a GIL-releasing call (a region access, a syscall) in a thread that may block
    in a fault or on a pending event, and collect its result or exception."""

    _started: ClassVar[list[Background]] = []  # this process's, for Context.close

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(fn, args, kwargs), daemon=True)
        self._thread.start()
        Background._started.append(self)

    @classmethod
    def join_all(cls, timeout: float) -> bool:
        """Wait up to ``timeout`` s in all for every started call; True when none is left."""
        deadline = time.monotonic() + timeout
        for call in cls._started:
            call._thread.join(max(0.0, deadline - time.monotonic()))
        cls._started = [call for call in cls._started if call._thread.is_alive()]
        return not cls._started

    def _main(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the scenario
            self.error = exc

    def finished(self, timeout: float = 5.0) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def value(self, timeout: float = 5.0) -> Any:
        if not self.finished(timeout):
            raise TimeoutError(f"background call still blocked after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def next_event(uffd: Userfaultfd, timeout: float = 5.0) -> Event | None:
    events = uffd.read_events(max_events=1, timeout=timeout)
    return events[0] if events else None
