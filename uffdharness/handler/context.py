"""What a Python policy sees (FaultContext) and the message loop of the Python engines."""

from __future__ import annotations

import errno
from collections.abc import Callable

from .._native import ffi, lib
from ..abi import CopyMode, EventType, FaultFlag
from ..errors import UffdError
from .core import Core, fault_info
from .policy import Builtin
from .stats import ReleaseReason

_KIND_NAMES = ("missing", "wp", "minor", "rwp")


class FaultContext:
    """The fault being handled, and the operations that resolve it.

    Every operation goes through the C core, so EEXIST (already there: woken, counted),
    EAGAIN (a pending event: read it, retry) and the statistics behave exactly as in the
    native engine. An operation that cannot resolve the faulting page raises UffdError.
    Addresses default to the faulting page; ``pages`` counts pages of the range's size.
    """

    __slots__ = ("_core", "_info")

    def __init__(self, core: Core) -> None:
        self._core = core
        self._info = fault_info()

    # --- the fault -----------------------------------------------------------------------

    @property
    def address(self) -> int:
        return self._info.address

    @property
    def flags(self) -> FaultFlag:
        return FaultFlag(self._info.flags)

    @property
    def kind(self) -> str:
        """'missing', 'wp', 'minor' or 'rwp' (the register mode that raised it)."""
        return _KIND_NAMES[self._info.kind]

    @property
    def is_write(self) -> bool:
        return bool(self._info.write)

    @property
    def thread_id(self) -> int:
        """The faulting thread's tid when UFFD_FEATURE_THREAD_ID was granted, else 0."""
        return self._info.tid

    @property
    def page(self) -> int:
        return self._info.page

    @property
    def page_size(self) -> int:
        return self._info.page_size

    @property
    def offset(self) -> int:
        """Offset of the faulting page in the served range's source coordinates (the range
        start plus its source offset; follows the range through mremap)."""
        return self._info.offset

    @property
    def range_start(self) -> int:
        return self._info.range_start

    @property
    def range_length(self) -> int:
        return self._info.range_len

    @property
    def uffd_index(self) -> int:
        """0 for the handler's uffd, then adopted fork children in order."""
        return self._info.uffd

    # --- resolving -----------------------------------------------------------------------

    def _resolve(self, op: int, dst: int | None, src: int, length: int, mode: int = 0) -> int:
        dst = self._info.page if dst is None else dst
        done = lib.uh_core_resolve(self._core.ptr, self._info, op, dst, src, length, mode)
        if done < 0:
            raise self._core.last_failure()
        return done

    def _length(self, pages: int) -> int:
        return pages * self._info.page_size

    def copy(
        self,
        source: int | bytes | bytearray | memoryview,
        length: int | None = None,
        *,
        dst: int | None = None,
        mode: CopyMode = CopyMode(0),
    ) -> int:
        """UFFDIO_COPY ``length`` bytes (default: all of a buffer, or one page from an
        address) to ``dst``; returns bytes copied."""
        if isinstance(source, int):
            length = self._info.page_size if length is None else length
            return self._resolve(lib.UH_OP_COPY, dst, source, length, int(mode))
        keep = ffi.from_buffer(source)
        length = len(keep) if length is None else length
        if length > len(keep):
            raise ValueError(f"copy of {length} bytes from a {len(keep)}-byte buffer")
        address = int(ffi.cast("uintptr_t", keep))
        return self._resolve(lib.UH_OP_COPY, dst, address, length, int(mode))

    def zeropage(self, pages: int = 1, *, dst: int | None = None) -> int:
        return self._resolve(lib.UH_OP_ZEROPAGE, dst, 0, self._length(pages))

    def unprotect(self, pages: int = 1, *, dst: int | None = None) -> int:
        return self._resolve(lib.UH_OP_UNPROTECT, dst, 0, self._length(pages))

    def writeprotect(self, pages: int = 1, *, dst: int | None = None) -> int:
        return self._resolve(lib.UH_OP_WRITEPROTECT, dst, 0, self._length(pages))

    def continue_(self, pages: int = 1, *, dst: int | None = None) -> int:
        return self._resolve(lib.UH_OP_CONTINUE, dst, 0, self._length(pages))

    def move(self, src: int, pages: int = 1, *, dst: int | None = None) -> int:
        """UFFDIO_MOVE from ``src``, an address in the faulting process."""
        return self._resolve(lib.UH_OP_MOVE, dst, src, self._length(pages))

    def wake(self, pages: int = 1, *, dst: int | None = None) -> None:
        self._resolve(lib.UH_OP_WAKE, dst, 0, self._length(pages))

    def leave(self) -> None:
        """Leave the fault unresolved (counted; stop() releases it)."""
        lib.uh_core_leave(self._core.ptr, self._info)

    def apply(self, policy: Builtin) -> None:
        """Resolve with a built-in policy's C code (window, delay, sources and all)."""
        index = self._core.policy_index(policy)
        if lib.uh_core_apply(self._core.ptr, self._info, index) < 0:
            raise self._core.last_failure()

    def __repr__(self) -> str:
        access = "write" if self.is_write else "read"
        return f"<FaultContext {self.kind} {access} {self.address:#x}>"


class PythonLoop:
    """poll + read + dispatch in Python: the body of the thread and process engines.

    ``should_stop`` is asked each time the wake fd fires. A policy exception (or a failed
    resolve) is recorded, every served range is released so no faulting thread is left
    asleep, and the exception propagates to the engine. A served uffd closed under the loop
    (noticed by the core's periodic check, or at the stop) ends it the same way, with
    UffdClosedError.
    """

    def __init__(self, core: Core, batch: int, should_stop: Callable[[], bool]) -> None:
        self.core = core
        self.batch = batch
        self.should_stop = should_stop

    def run(self) -> None:
        core = self.core
        ptr = core.ptr
        policies = core.policies
        ctx = FaultContext(core)
        info = ctx._info
        ready = ffi.new("uint64_t *")
        woken = ffi.new("int *")
        t_read = ffi.new("uint64_t *")
        msgs = ffi.new("struct uh_uffd_msg[]", self.batch)
        pagefault = int(EventType.PAGEFAULT)
        closed = False  # the core found a served uffd closed (already recorded)
        try:
            while True:
                count = lib.uh_core_wait(ptr, -1, ready, woken)
                if count == -errno.EBADF:
                    closed = True
                    raise core.closed_failure()
                if count < 0:
                    raise UffdError(-count, "poll(uffd)")
                if woken[0] and self.should_stop():
                    if lib.uh_core_verify(ptr) < 0:  # closed just before the stop
                        closed = True
                        raise core.closed_failure()
                    lib.uh_core_flush_events(ptr)
                    return
                mask = ready[0]
                while mask:
                    uffd = (mask & -mask).bit_length() - 1
                    mask &= mask - 1
                    got = lib.uh_core_read(ptr, uffd, msgs, self.batch, t_read)
                    if got == -errno.EAGAIN:
                        continue
                    if got < 0:
                        raise UffdError(-got, "read(uffd)")
                    for i in range(got):
                        msg = msgs + i
                        if msg.event != pagefault:
                            lib.uh_core_event(ptr, uffd, msg)
                        elif lib.uh_core_fault(ptr, uffd, msg, t_read[0], info) >= 0:
                            policies[info.policy].on_fault(ctx)
        except BaseException as exc:
            if closed:
                core.release(ReleaseReason.CLOSED)
            else:
                core.record_failure(exc)
                core.release(ReleaseReason.FAILURE)
            raise
