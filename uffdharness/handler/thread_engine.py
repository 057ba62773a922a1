"""The thread engine: a Python thread running Python policies.

It holds the GIL while it runs a policy, so a thread that touches registered memory while
holding the GIL (a raw memoryview, ctypes.string_at) deadlocks it: touch registered memory
through the GIL-releasing Region helpers. With UFFD_FEATURE_EVENT_FORK, os.fork() holds
the GIL while the kernel waits for this thread to read the fork event: fork from C code
that releases the GIL instead (uh_fork_toucher, or the process engine).
"""

from __future__ import annotations

import os
import threading

from .._native import lib
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

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="uffd-handler", daemon=True)
        self._thread.start()

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
