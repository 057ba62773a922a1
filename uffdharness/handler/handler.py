"""FaultHandler: serve the page faults of one Userfaultfd with a policy on an engine."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable
from typing import Literal

from .._native import lib
from ..abi import Feature
from ..errors import HarnessError
from ..memory import PAGE_SIZE
from ..uffd import Userfaultfd
from .context import FaultContext
from .core import Core, UffdClosedError
from .engine import Engine
from .native import NativeEngine
from .policy import Builtin, HasRange, Policy, as_policy, require_native
from .process_engine import ProcessEngine
from .stats import HandlerStats
from .thread_engine import ThreadEngine

EngineName = Literal["native", "thread", "process"]
ENGINES: tuple[EngineName, ...] = ("native", "thread", "process")
OnRemove = Literal["forget", "unregister"]
Served = HasRange | tuple[int, int] | tuple[int, int, int]
PolicyLike = Policy | Callable[[FaultContext], object]


def _moves(policy: Policy) -> bool:
    return isinstance(policy, Builtin) and any(
        action.code == lib.UH_ACT_MOVE for action in policy.actions().values()
    )


def _span(region: Served, page_size: int | None) -> tuple[int, int, int]:
    if isinstance(region, tuple):
        addr, length, *rest = region
        return addr, length, page_size or (rest[0] if rest else PAGE_SIZE)
    return region.addr, region.length, page_size or getattr(region, "page_size", PAGE_SIZE)


class FaultHandler:
    """Serve the faults of ``uffd`` in ``regions`` with ``policy``, on one engine.

    ``native`` runs built-in policies in a C pthread without the GIL; ``thread`` runs any
    policy in a Python thread (touch registered memory only through the GIL-releasing
    Region helpers then); ``process`` runs any policy in a forked helper process, immune to
    a faulting thread holding the GIL. Use it as a context manager::

        with FaultHandler(uffd, Copy(source), region, engine="native") as handler:
            region.touch()
        assert handler.stats.faults.missing == region.pages

    ``stop()`` re-raises a policy's exception (``check()`` does so while running); the
    handler has then already unregistered and woken every range it serves, so faulting
    threads retry as ordinary faults. With ``release_on_stop`` (the default) ``stop()``
    does the same, so nothing touched afterwards can sleep on a uffd nobody reads; without
    it, ranges are released only if a fault was left unresolved.

    The handler does not own ``uffd`` (it sets O_NONBLOCK on it). From start() it reads a
    private duplicate of it, closed at stop (the process engine's helper reads the copy it
    inherited). Closing ``uffd`` under a running handler is noticed within about 50 ms:
    it releases its ranges and closes its duplicate, which lets the kernel release the
    uffd and wake every thread asleep in a fault; check()/stop() raise UffdClosedError.
    Whatever file takes the closed fd number is never read. The child uffds it adopts from
    fork events are its own, watched the same way, and closed at stop.

    ``blocking_read`` (native engine, one uffd): the thread sleeps in a blocking read() of
    the uffd instead of in poll(), as uffd-stress's read mode does. O_NONBLOCK is cleared
    on the uffd's open file (shared with ``uffd``) while it runs and set again at stop;
    stop() interrupts the read with a signal. A close of ``uffd`` is not noticed meanwhile.

    ``on_remove`` says what a UFFD_EVENT_REMOVE (MADV_DONTNEED/MADV_REMOVE of a served
    range) does: ``"forget"`` marks the pages absent and serves them again when they fault;
    ``"unregister"`` unregisters the removed range (as the kernel selftests' handler does)
    and stops serving it, so it reads as the memory's own content (zeros) afterwards.
    """

    def __init__(
        self,
        uffd: Userfaultfd,
        policy: PolicyLike | None = None,
        regions: Served | Iterable[Served] = (),
        *,
        engine: EngineName = "native",
        cpu: int | None = None,
        busy_poll: bool = False,
        blocking_read: bool = False,
        batch: int = 64,
        release_on_stop: bool = True,
        stop_timeout: float = 5.0,
        on_remove: OnRemove = "forget",
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        if busy_poll and engine != "native":
            raise ValueError("busy_poll is a native-engine mode")
        if blocking_read and (engine != "native" or busy_poll):
            raise ValueError("blocking_read is a native-engine mode, exclusive of busy_poll")
        if not 1 <= batch <= 1024:
            raise ValueError(f"batch must be 1..1024 messages, got {batch}")
        if on_remove not in ("forget", "unregister"):
            raise ValueError(f"on_remove must be 'forget' or 'unregister', not {on_remove!r}")
        self.uffd = uffd
        self.engine_name: EngineName = engine
        self.policy = None if policy is None else as_policy(policy)
        if self.policy is not None and engine == "native":
            require_native(self.policy)
        self.cpu = cpu
        self.busy_poll = busy_poll
        self.blocking_read = blocking_read
        self.batch = batch
        self.release_on_stop = release_on_stop
        self.stop_timeout = stop_timeout
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            self._core = Core(self._wake_fd)
            self._core.add_uffd(uffd.fileno(), owned=False)
            self._core.set_remove_unregisters(on_remove == "unregister")
        except BaseException:
            os.close(self._wake_fd)
            raise
        self._engine: Engine | None = None
        self._state = "new"
        self._delivered: BaseException | None = None
        if isinstance(regions, tuple) and regions and isinstance(regions[0], int):
            regions = [regions]  # type: ignore[list-item]
        elif not isinstance(regions, Iterable):
            regions = [regions]
        try:
            for region in regions:  # type: ignore[union-attr]
                self.serve(region)
        except BaseException:
            self._state = "stopped"
            self._close()
            raise

    # --- configuration -------------------------------------------------------------------

    def serve(
        self,
        region: Served,
        policy: PolicyLike | None = None,
        *,
        source_offset: int = 0,
        page_size: int | None = None,
    ) -> None:
        """Serve faults in ``region`` (a Region, or (addr, length[, page_size])) with
        ``policy`` (default: the handler's). ``source_offset`` is the source offset of the
        region's first byte. Allowed while running, except on the process engine."""
        chosen = self.policy if policy is None else as_policy(policy)
        if chosen is None:
            raise TypeError("no policy: give one to serve() or to FaultHandler()")
        if self.engine_name == "native":
            require_native(chosen)
        if self.engine_name == "process" and _moves(chosen):
            # fs/userfaultfd.c refuses cross-mm moves (EINVAL): MOVE works only from a
            # thread of the faulting process.
            raise HarnessError(
                "UFFDIO_MOVE only works within the faulting process: use "
                "the native or thread engine for Move"
            )
        if self._state == "stopped":
            raise HarnessError("handler is stopped")
        if self._state == "running" and self.engine_name == "process":
            raise HarnessError("the process engine's helper owns its ranges: serve before start")
        addr, length, size = _span(region, page_size)
        self._core.add_range(0, addr, length, size, source_offset, chosen)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultHandler:
        if self._state != "new":
            raise HarnessError(f"handler is {self._state}")
        engine: Engine | None = None
        try:
            if self.uffd.closed:  # its number may hold another file by now: never dup that
                raise UffdClosedError(errno.EBADF, "userfaultfd", detail="closed before start()")
            if self.engine_name != "process":  # the helper watches this process's fd itself
                self._core.own_uffd(0, os.getpid())
            engine = self._make_engine()
            engine.start()
        except BaseException:
            self._state = "stopped"
            if engine is not None:
                # A signal's exception can land right after start() returned: the engine
                # runs on the core, so stop it before the core is freed.
                self._engine = engine
                with contextlib.suppress(Exception):  # the exception raised here matters
                    engine.stop()
            self._close()
            raise
        self._engine = engine
        self._state = "running"
        return self

    def _make_engine(self) -> Engine:
        if self.engine_name == "native":
            return NativeEngine(
                self._core,
                cpu=self.cpu,
                busy_poll=self.busy_poll,
                batch=self.batch,
                release_on_stop=self.release_on_stop,
                blocking_read=self.blocking_read,
            )
        if self.engine_name == "thread":
            engine = ThreadEngine(
                self._core,
                self._wake_fd,
                cpu=self.cpu,
                batch=self.batch,
                release_on_stop=self.release_on_stop,
                stop_timeout=self.stop_timeout,
            )
            features = self.uffd.features
            engine.watch_fork = features is None or bool(features & Feature.EVENT_FORK)
            return engine
        return ProcessEngine(
            self._core,
            self.uffd.fileno(),
            cpu=self.cpu,
            batch=self.batch,
            release_on_stop=self.release_on_stop,
            stop_timeout=self.stop_timeout,
        )

    def stop(self) -> HandlerStats:
        """Stop the engine (an eventfd/pipe wake, not a poll timeout), release as described
        above, free everything, and re-raise the engine's failure if there was one."""
        if self._state == "stopped":
            return self.stats
        failure = None
        if self._engine is not None:
            failure = self._engine.stop()
        self._state = "stopped"
        self._close()
        if failure is not None and failure is not self._delivered:
            raise failure
        return self.stats

    def check(self) -> None:
        """Raise now what stop() would raise, if the engine has already failed (stop()
        then does not raise it a second time)."""
        if self._engine is not None and self._state == "running":
            failure = self._engine.failure()
            if failure is not None:
                self._delivered = failure
                raise failure

    def _close(self) -> None:
        if self._engine is not None and self._engine.core_in_use:
            return  # a stuck policy thread still uses the core: keep it
        self._core.free()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def __enter__(self) -> FaultHandler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- observation -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def worker_id(self) -> int | None:
        """tid of the native or thread engine's thread, pid of the process engine's helper
        (None unless running): what CPU placement and /proc inspection need."""
        return self._engine.worker_id if self._engine is not None and self.running else None

    @property
    def stats(self) -> HandlerStats:
        """Counters as of now (live while running; final after stop)."""
        return self._core.stats()

    def served_ranges(self, uffd: int = 0) -> list[tuple[int, int, int]]:
        """(start, length, source offset) of each range served on uffd number ``uffd``, as
        the handler tracks them through remap/unmap events (native and thread engines; the
        process engine's table lives in its helper)."""
        if self._state == "stopped":
            raise HarnessError("handler is stopped")
        return self._core.ranges(uffd)

    def __repr__(self) -> str:
        return f"<FaultHandler {self.engine_name} {self._state} on {self.uffd!r}>"
