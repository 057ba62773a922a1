"""The native engine: the C loop in a pthread (cext/uffd_handler.c), no GIL anywhere."""

from __future__ import annotations

import time

from .._native import ffi, lib
from ..errors import HarnessError
from .core import Core
from .engine import Engine, release_at_stop


class NativeEngine(Engine):
    name = "native"

    def __init__(
        self,
        core: Core,
        *,
        cpu: int | None,
        busy_poll: bool,
        batch: int,
        release_on_stop: bool,
        blocking_read: bool = False,
    ) -> None:
        self.core = core
        self.cpu = -1 if cpu is None else cpu
        self.wait = (
            lib.UH_WAIT_READ
            if blocking_read
            else lib.UH_WAIT_BUSY
            if busy_poll
            else lib.UH_WAIT_POLL
        )
        self.batch = batch
        self.release_on_stop = release_on_stop
        self._ptr = ffi.NULL
        self._failure: BaseException | None = None

    def start(self) -> None:
        self._ptr = lib.uh_native_start(self.core.ptr, self.cpu, self.wait, self.batch)
        if self._ptr == ffi.NULL:
            raise HarnessError("could not start the native handler thread")

    def stop(self) -> BaseException | None:
        ptr, self._ptr = self._ptr, ffi.NULL
        if ptr == ffi.NULL:
            return None
        rc = lib.uh_native_stop(ptr)
        failure = self._recorded_failure()
        if rc < 0 and failure is None:
            failure = self._failure = HarnessError(f"native handler ended with error {-rc}")
        if failure is None:
            release_at_stop(self.core, self.release_on_stop)
        return failure

    def failure(self) -> BaseException | None:
        if self._ptr != ffi.NULL and lib.uh_native_done(self._ptr):
            return self._recorded_failure()
        return None

    def _recorded_failure(self) -> BaseException | None:
        """The failure in the shared counters, as one exception object (check() and stop()
        hand out the same one)."""
        if self._failure is None:
            self._failure = self.core.stats_failure()
        return self._failure

    @property
    def worker_id(self) -> int | None:
        if self._ptr == ffi.NULL:
            return None
        deadline = time.monotonic() + 1
        while not (tid := lib.uh_native_tid(self._ptr)) and time.monotonic() < deadline:
            time.sleep(0.001)
        return tid or None

    @property
    def core_in_use(self) -> bool:
        return self._ptr != ffi.NULL
