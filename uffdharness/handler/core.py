"""The Python owner of one C fault-handling core (struct uh_core) and its shared counters."""

from __future__ import annotations

import errno
from typing import Any

from .._native import ffi, lib
from ..errors import HarnessError, UffdError
from .policy import Builtin, Policy, Resources
from .stats import OP_NAMES, HandlerStats, ReleaseReason, closed_uffd


class UffdClosedError(UffdError):
    """A uffd the handler served was closed under it (EBADF). The caller's or an adopted
    child's: the handler released its ranges and closed its duplicate (so the kernel
    released the uffd and woke its faults), then stopped. The handler's own duplicate,
    closed by someone else: it stopped, with nothing left to unregister through."""


class Core:
    """Served uffds, their ranges and policies, and the counters every engine writes.

    Owned by one FaultHandler; ``free`` releases the C memory, the adopted child uffds and
    the opened policy sources exactly once.
    """

    def __init__(self, wake_fd: int) -> None:
        self.stats_ptr = lib.uh_stats_new()
        if self.stats_ptr == ffi.NULL:
            raise MemoryError("mmap for handler statistics failed")
        self.ptr = lib.uh_core_new(self.stats_ptr, wake_fd)
        if self.ptr == ffi.NULL:
            lib.uh_stats_free(self.stats_ptr)
            raise MemoryError("allocating the handler core failed")
        self.policies: list[Policy] = []
        self._indexes: dict[int, int] = {}
        self.resources = Resources()
        self._final: HandlerStats | None = None  # the counters as they were when freed

    # --- configuration -------------------------------------------------------------------

    def policy_index(self, policy: Policy) -> int:
        """The core's slot for ``policy``, filled on first use (built-ins get their C
        config; Python policies an empty one the C side never runs)."""
        index = self._indexes.get(id(policy))
        if index is not None:
            return index
        index = len(self.policies)
        if index >= lib.UH_MAX_POLICIES:
            raise HarnessError(f"more than {lib.UH_MAX_POLICIES} policies on one handler")
        if isinstance(policy, Builtin):
            config = policy.compile(self.resources)
        else:
            config = ffi.new("struct uh_policy *")
        self._check(lib.uh_core_set_policy(self.ptr, index, config), "set policy")
        self.policies.append(policy)
        self._indexes[id(policy)] = index
        return index

    def set_remove_unregisters(self, unregister: bool) -> None:
        """UFFD_EVENT_REMOVE unregisters the removed range (True) or forgets its pages."""
        lib.uh_core_set_remove_unregisters(self.ptr, int(unregister))

    def add_uffd(self, fd: int, owned: bool = False) -> int:
        return self._check(lib.uh_core_add_uffd(self.ptr, fd, int(owned)), "add uffd")

    def own_uffd(self, uffd: int, owner_pid: int) -> None:
        """Read uffd number ``uffd`` through a private duplicate (F_DUPFD_CLOEXEC, closed
        with the core) and watch the fd it was added with, in process ``owner_pid``."""
        self._check(lib.uh_core_own_uffd(self.ptr, uffd, owner_pid), "F_DUPFD_CLOEXEC(uffd)")

    def add_range(
        self,
        uffd: int,
        start: int,
        length: int,
        page_size: int,
        source_offset: int,
        policy: Policy,
    ) -> None:
        index = self.policy_index(policy)
        self._check(
            lib.uh_core_add_range(self.ptr, uffd, start, length, page_size, source_offset, index),
            f"serve [{start:#x}+{length:#x}] (page size {page_size})",
        )

    def ranges(self, uffd: int = 0) -> list[tuple[int, int, int]]:
        """(start, length, source offset) of every range served on uffd number ``uffd``."""
        start, length, offset = (ffi.new("uint64_t *") for _ in range(3))
        found = []
        for index in range(max(lib.uh_core_nranges(self.ptr, uffd), 0)):
            if lib.uh_core_range(self.ptr, uffd, index, start, length, offset) == 0:
                found.append((start[0], length[0], offset[0]))
        return found

    @staticmethod
    def _check(rc: int, what: str) -> int:
        if rc < 0:
            raise UffdError(-rc, what)
        return rc

    # --- state -----------------------------------------------------------------------------

    def rebind_wake(self, wake_fd: int) -> None:
        lib.uh_core_set_wake_fd(self.ptr, wake_fd)

    def stats(self) -> HandlerStats:
        return self._final if self._final is not None else HandlerStats.read(self.stats_ptr)

    def last_failure(self) -> UffdError:
        failure = ffi.new("struct uh_failure *")
        lib.uh_core_last_failure(self.ptr, failure)
        return failure_error(failure.err, failure.op, failure.addr, failure.len, failure.done)

    def closed_failure(self) -> UffdError:
        """The close uh_core_wait/uh_core_verify reported with -EBADF (and recorded)."""
        return self.stats_failure() or UffdClosedError(errno.EBADF, "userfaultfd")

    def stats_failure(self) -> UffdError | None:
        """The engine failure recorded in the shared counters, as an exception."""
        s = self.stats_ptr
        if not s.failed_errno:
            return None
        return failure_error(
            s.failed_errno, s.failed_op, s.failed_addr, s.failed_len, s.failed_done
        )

    def record_failure(self, exc: BaseException) -> None:
        """Count a failure of the engine's own (policy raised, ioctl failed)."""
        if isinstance(exc, UffdError) and exc.errno:
            op = _op_code(exc.op)
            lib.uh_core_fail(
                self.ptr, exc.errno, op, exc.start or 0, exc.length or 0, exc.done or 0
            )
        else:
            lib.uh_core_fail(self.ptr, 0, 0, 0, 0, 0)

    def left_behind(self) -> bool:
        return bool(lib.uh_core_left_behind(self.ptr))

    def release(self, reason: ReleaseReason) -> int:
        return lib.uh_core_release(self.ptr, int(reason))

    def free(self) -> None:
        if self.ptr is None:
            return
        # A snapshot, not a copy of the struct: copying its 568 KB (faulting in every page
        # of the shared block) made freeing cost 0.5 ms, a bounce's worth in stress.
        self._final = HandlerStats.read(self.stats_ptr)
        lib.uh_core_free(self.ptr)
        lib.uh_stats_free(self.stats_ptr)
        self.ptr = self.stats_ptr = None  # type: ignore[assignment]
        self.resources.close()


def failure_error(err: int, op: int, addr: int, length: int, done: int) -> UffdError:
    if op == lib.UH_OP_CLOSED:
        detail = "closed under the running handler, which released its ranges and stopped"
        return UffdClosedError(err, closed_uffd(op, addr, length), detail=detail)
    if op == lib.UH_OP_LOST:
        # Not the owner's close: someone closed a number they were never given. With its
        # own reference gone the handler can neither read nor unregister that uffd.
        detail = (
            "closed under the running handler by someone else: it stopped, unable to unregister"
        )
        return UffdClosedError(err, closed_uffd(op, addr, length), detail=detail)
    if op == lib.UH_OP_NO_ACTION:
        kind = {0: "missing", 1: "wp", 2: "minor", 3: "rwp"}.get(length, str(length))
        return UffdError(err, "policy", addr, detail=f"the policy has no action for {kind} faults")
    return UffdError(err, OP_NAMES.get(op, f"op {op}"), addr, length, done=done)


def _op_code(name: str) -> int:
    for code, op_name in OP_NAMES.items():
        if op_name == name:
            return code
    return 0


def fault_info() -> Any:
    return ffi.new("struct uh_fault_info *")
