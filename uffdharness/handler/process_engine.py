"""The process engine: Python policies in a forked helper process sharing the uffd.

UFFDIO_COPY reads ``src`` from the memory of the process that calls it, so the helper
copies from its own (fork-time) copy of every source, and the caller's threads may touch
registered memory holding the GIL: the helper has a GIL of its own. This is how VMM
snapshot handlers serve a guest from another process.

Forking a process with registered ranges raises UFFD_EVENT_FORK on a uffd that asked for
it, and fork() sleeps until the event is read. While the helper is forked a C thread (the
bridge) reads the uffd, closes the helper's own child uffd and keeps any other message for
the helper, which takes them over before it reads the uffd itself.

The helper's inherited copy of the uffd outlives the caller's close, so the helper watches
the caller's fd number in the parent (kcmp(2), or the inode behind /proc/PPID/fd/N) and
ends with UffdClosedError when it goes, releasing its ranges; its exit drops its copies.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import time
import traceback

from .._native import ffi, lib
from ..abi import MSG_SIZE
from ..errors import HarnessError
from .context import PythonLoop
from .core import Core
from .engine import Engine, release_at_stop

_STASH_MAX = 4096
_COUNT = struct.Struct("<q")


class HelperTraceback(Exception):
    """The helper process's traceback, chained as the cause of a re-raised exception."""


class ProcessEngine(Engine):
    name = "process"

    def __init__(
        self,
        core: Core,
        uffd_fd: int,
        *,
        cpu: int | None,
        batch: int,
        release_on_stop: bool,
        stop_timeout: float,
    ) -> None:
        self.core = core
        self.uffd_fd = uffd_fd
        self.cpu = cpu
        self.batch = batch
        self.release_on_stop = release_on_stop
        self.stop_timeout = stop_timeout
        self.pid: int | None = None
        self._wake_w = -1
        self._result_r = -1
        self._result: bytes | None = None
        self._reported: tuple[BaseException | None] | None = None
        self._outcome: BaseException | None = None

    # --- parent side -----------------------------------------------------------------------

    def start(self) -> None:
        wake_r, wake_w = os.pipe()
        result_r, result_w = os.pipe()
        hello_r, hello_w = os.pipe()
        parent = os.getpid()
        bridge = lib.uh_bridge_start(self.uffd_fd, 1)
        if bridge == ffi.NULL:
            for fd in (wake_r, wake_w, result_r, result_w, hello_r, hello_w):
                os.close(fd)
            raise HarnessError("could not start the fork bridge thread")
        try:
            pid = os.fork()
        except BaseException:
            lib.uh_bridge_stop(bridge, ffi.NULL, 0, ffi.new("int *"))
            for fd in (wake_r, wake_w, result_r, result_w, hello_r, hello_w):
                os.close(fd)
            raise
        if pid == 0:  # pragma: no cover - runs in the helper
            os.close(wake_w)
            os.close(result_r)
            os.close(hello_w)
            self._helper(parent, wake_r, result_w, hello_r)
        self.pid = pid
        os.close(wake_r)
        os.close(result_w)
        os.close(hello_r)
        stash = ffi.new("struct uh_uffd_msg[]", _STASH_MAX)
        forks = ffi.new("int *")
        count = lib.uh_bridge_stop(bridge, stash, _STASH_MAX, forks)
        try:
            if count < 0:
                raise HarnessError(f"more than {_STASH_MAX} messages arrived during fork")
            payload = _COUNT.pack(count) + bytes(ffi.buffer(stash, count * MSG_SIZE))
            _write_all(hello_w, payload)
        except BaseException:
            os.close(hello_w)
            self._wake_w, self._result_r = wake_w, result_r
            self.stop()
            raise
        os.close(hello_w)
        self._wake_w, self._result_r = wake_w, result_r

    def stop(self) -> BaseException | None:
        if self.pid is None:
            return self._outcome
        try:
            os.write(self._wake_w, b"s")
        except BrokenPipeError:
            pass  # already gone: its result (or its death) says why
        deadline = time.monotonic() + self.stop_timeout
        self._collect(deadline)
        status = _wait(self.pid, deadline)
        killed = status is None
        if killed:
            os.kill(self.pid, signal.SIGKILL)
            status = os.waitpid(self.pid, 0)[1]
        self.pid = None
        os.close(self._wake_w)
        os.close(self._result_r)
        self._wake_w = self._result_r = -1
        self._outcome = self._decode(status, killed)
        return self._outcome

    @property
    def worker_id(self) -> int | None:
        return self.pid

    def failure(self) -> BaseException | None:
        if self.pid is None:
            return self._outcome
        if self._result is None:
            readable, _, _ = select.select([self._result_r], [], [], 0)
            if not readable:
                return None
            self._collect(time.monotonic() + self.stop_timeout)
        return self._report() if self._result else None

    def _collect(self, deadline: float) -> None:
        """Read the helper's report up to EOF (it writes it just before it exits)."""
        if self._result is not None:
            return
        chunks = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([self._result_r], [], [], remaining)
            if not readable:
                break
            chunk = os.read(self._result_r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        self._result = b"".join(chunks)

    def _decode(self, status: int, killed: bool) -> BaseException | None:
        if killed:
            return HarnessError(f"handler helper did not stop within {self.stop_timeout}s: killed")
        if not self._result:
            if os.WIFSIGNALED(status):
                name = signal.Signals(os.WTERMSIG(status)).name
                return HarnessError(f"handler helper died of {name} without a report")
            return HarnessError(f"handler helper exited ({status:#x}) without a report")
        return self._report()

    def _report(self) -> BaseException | None:
        """The helper's report, decoded once (check() and stop() give the same object)."""
        if self._reported is None:
            outcome = pickle.loads(self._result or b"")
            exc = None
            if outcome[0] != "ok":
                _, exc, text = outcome
                exc.__cause__ = HelperTraceback(text)
            self._reported = (exc,)
        return self._reported[0]

    # --- helper side -----------------------------------------------------------------------

    def _helper(
        self, parent: int, wake_r: int, result_w: int, hello_r: int
    ) -> None:  # pragma: no cover
        outcome: tuple = ("ok",)
        try:
            # The uffd number inherited here stays open whatever the parent does: read a
            # duplicate, and watch the parent's number so its close ends this helper too.
            self.core.own_uffd(0, parent)
            try:
                stash = _read_all(hello_r)
            finally:
                os.close(hello_r)
            (count,) = _COUNT.unpack_from(stash)
            if count:
                msgs = ffi.from_buffer("struct uh_uffd_msg[]", stash[_COUNT.size :])
                lib.uh_core_push_backlog(self.core.ptr, 0, msgs, count)
            if self.cpu is not None:
                os.sched_setaffinity(0, {self.cpu})
            self.core.resources.populate()
            # The wake pipe is the stop signal, and its EOF means the parent has gone.
            self.core.rebind_wake(wake_r)
            PythonLoop(self.core, self.batch, lambda: True).run()
            release_at_stop(self.core, self.release_on_stop)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            outcome = ("error", exc, "".join(traceback.format_exception(exc)))
        try:
            try:
                payload = pickle.dumps(outcome)
            except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
                payload = pickle.dumps(
                    ("error", HarnessError(f"{outcome[1]!r} (unpicklable: {exc})"), outcome[2])
                )
            _write_all(result_w, payload)
        finally:
            os._exit(0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _wait(pid: int, deadline: float) -> int | None:
    """waitpid until the deadline; None if the process is still running then."""
    delay = 0.0005
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
