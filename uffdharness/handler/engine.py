"""What every engine offers the FaultHandler, and the stop-time release rule they share."""

from __future__ import annotations

from abc import ABC, abstractmethod

from .core import Core
from .stats import ReleaseReason


class Engine(ABC):
    name: str

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> BaseException | None:
        """Stop and join; return the failure that ended the engine early, if any."""

    @abstractmethod
    def failure(self) -> BaseException | None:
        """The failure that has ended the engine, without waiting (None while healthy)."""

    @property
    def worker_id(self) -> int | None:
        """The tid of the engine thread, or the pid of the helper process."""
        return None

    @property
    def core_in_use(self) -> bool:
        """False once nothing can touch the core any more (so it can be freed)."""
        return False


def release_at_stop(core: Core, release_on_stop: bool) -> None:
    """After a clean stop: release every served range if asked to, and in any case when a
    fault was read and never resolved or a message is still queued, since its thread
    would otherwise sleep until the uffd is closed."""
    if release_on_stop:
        core.release(ReleaseReason.STOP)
    elif core.left_behind():
        core.release(ReleaseReason.LEFT_BEHIND)
