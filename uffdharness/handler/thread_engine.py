"""The thread engine: a Python thread running Python policies.

It holds the GIL while it runs a policy, so a thread that touches registered memory while
holding the GIL (a raw memoryview, ctypes.string_at) deadlocks it: touch registered memory
through the GIL-releasing Region helpers.

With UFFD_FEATURE_EVENT_FORK, os.fork() would deadlock too: fork() sleeps until the fork
event is read while the forking thread holds the GIL. So around os.fork() (at-fork hooks)
a C thread reads the uffd and the messages it read, the fork event included, are handed to
this engine afterwards. A fork() from C that skips Python's at-fork hooks must release the
GIL (as cffi calls do) for the engine to read the event itself.
"""

from __future__ import annotations

import os
import threading
import weakref

from .._native import ffi, lib
from ..errors import HarnessError
from .context import PythonLoop
from .core import Core
from .engine import Engine, release_at_stop


class ThreadEngine(Engine):
    name = "thread"

    def __init__(
        self,
        core: Core,
        wake_fd: int,
        *,
        cpu: int | None,
        batch: int,
        release_on_stop: bool,
        stop_timeout: float,
    ) -> None:
        self.core = core
        self.wake_fd = wake_fd
        self.cpu = cpu
        self.batch = batch
        self.release_on_stop = release_on_stop
        self.stop_timeout = stop_timeout
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self.watch_fork = False
        self._bridge = ffi.NULL

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="uffd-handler", daemon=True)
        self._thread.start()
        if self.watch_fork:
            _FORK_WATCH.add(self)

    # at-fork hooks (the GIL is held throughout fork(); see the module docstring)

    def _before_fork(self) -> None:
        self._bridge = lib.uh_bridge_start(lib.uh_core_fd(self.core.ptr, 0), 0)

    def _after_fork_in_parent(self) -> None:
        bridge, self._bridge = self._bridge, ffi.NULL
        if bridge == ffi.NULL:
            return
        stash = ffi.new("struct uh_uffd_msg[]", _STASH_MAX)
        forks = ffi.new("int *")
        count = lib.uh_bridge_stop(bridge, stash, _STASH_MAX, forks)
        if count > 0:
            lib.uh_core_push_backlog(self.core.ptr, 0, stash, count)
            os.eventfd_write(self.wake_fd, 1)

    def _after_fork_in_child(self) -> None:
        self._bridge = ffi.NULL  # its thread exists only in the parent

    def _main(self) -> None:
        try:
            if self.cpu is not None:
                os.sched_setaffinity(0, {self.cpu})  # pid 0: this thread only
            PythonLoop(self.core, self.batch, lambda: self._stopping).run()
        except BaseException as exc:  # noqa: BLE001 - handed to stop()/check()
            self._error = exc

    def stop(self) -> BaseException | None:
        thread = self._thread
        if thread is None:
            return None
        _FORK_WATCH.discard(self)
        self._stopping = True
        lib.uh_core_set_stopping(self.core.ptr, 1)
        os.eventfd_write(self.wake_fd, 1)
        thread.join(self.stop_timeout)
        if thread.is_alive():
            raise HarnessError(
                f"handler thread still busy {self.stop_timeout}s after stop(): a policy is "
                "blocked (the core is kept alive for it)"
            )
        self._thread = None
        if self._error is None:
            release_at_stop(self.core, self.release_on_stop)
        return self._error

    def failure(self) -> BaseException | None:
        return self._error

    @property
    def worker_id(self) -> int | None:
        return None if self._thread is None else self._thread.native_id

    @property
    def core_in_use(self) -> bool:
        return self._thread is not None


_STASH_MAX = 4096
_FORK_WATCH: weakref.WeakSet[ThreadEngine] = weakref.WeakSet()


def _each(method: str) -> None:
    for engine in list(_FORK_WATCH):
        getattr(engine, method)()


os.register_at_fork(
    before=lambda: _each("_before_fork"),
    after_in_parent=lambda: _each("_after_fork_in_parent"),
    after_in_child=lambda: _each("_after_fork_in_child"),
)
