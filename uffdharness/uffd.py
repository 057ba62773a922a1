"""The userfaultfd object: open, negotiate the API, register ranges, resolve faults, read events."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ._native import ffi, lib
from .abi import (
    ALL_FEATURES,
    UFFD_API,
    ContinueMode,
    CopyMode,
    EventType,
    FaultFlag,
    Feature,
    Ioctl,
    IoctlRequest,
    MoveMode,
    OpenFlag,
    PoisonMode,
    RegisterMode,
    WriteProtectMode,
    ZeropageMode,
    flag_names,
    missing_features,
)
from .errors import FeatureUnavailable, UffdError
from .events import (
    Event,
    ForkEvent,
    PagefaultEvent,
    RemapEvent,
    RemoveEvent,
    UnknownEvent,
    UnmapEvent,
)
from .owned_fd import OwnedFd

OpenVia = Literal["auto", "syscall", "dev"]


class HasRange(Protocol):
    addr: int
    length: int


Target = int | HasRange


def _as_range(target: Target, length: int | None) -> tuple[int, int]:
    if isinstance(target, int):
        if length is None:
            raise TypeError("an address needs a length")
        return target, length
    return target.addr, target.length if length is None else length


@dataclass(frozen=True, slots=True)
class ApiResult:
    """What UFFDIO_API granted.

    The kernel writes back every feature it supports in uffdio_api.features (``offered``);
    the features in force on this uffd are the ones requested (``features``).
    """

    features: Feature
    offered: Feature
    ioctls: Ioctl


@dataclass(frozen=True, slots=True)
class ApiProbe:
    """What the running kernel offers, probed on a throw-away uffd."""

    features: Feature
    ioctls: Ioctl
    opened_via: str


def _open_fd(via: OpenVia, flags: int) -> tuple[int, str]:
    """Returns (fd, "syscall" | "/dev/userfaultfd")."""
    if via in ("auto", "syscall"):
        fd = lib.uh_userfaultfd_syscall(flags)
        if fd >= 0:
            return fd, "syscall"
        # EPERM: vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE; ENOSYS: no syscall.
        if via == "syscall" or -fd not in (errno.EPERM, errno.ENOSYS):
            raise UffdError(-fd, "userfaultfd(2)")
    fd = lib.uh_userfaultfd_dev(flags)
    if fd < 0:
        raise UffdError(-fd, "USERFAULTFD_IOC_NEW", detail="/dev/userfaultfd (6.1)")
    return fd, "/dev/userfaultfd"


class Userfaultfd(OwnedFd):
    """One userfaultfd file descriptor; owns it and closes it exactly once."""

    _what = "userfaultfd"

    def __init__(self, fd: int, opened_via: str = "adopted", features: Feature | None = None):
        self._fd = fd
        self.opened_via = opened_via
        self.features: Feature | None = features
        self.ioctls: Ioctl | None = None
        self._msg_buffer = ffi.new("struct uh_uffd_msg[]", 64)

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        features: Feature = Feature(0),
        *,
        via: OpenVia = "auto",
        cloexec: bool = True,
        nonblock: bool = True,
        user_mode_only: bool = False,
        api: bool = True,
    ) -> Userfaultfd:
        """Open a uffd and (unless ``api=False``) negotiate ``features`` through UFFDIO_API.

        Asking for a feature the kernel lacks raises FeatureUnavailable naming it.
        """
        flags = 0
        if cloexec:
            flags |= OpenFlag.CLOEXEC
        if nonblock:
            flags |= OpenFlag.NONBLOCK
        if user_mode_only:
            flags |= OpenFlag.USER_MODE_ONLY
        fd, opened_via = _open_fd(via, int(flags))
        uffd = cls(fd, opened_via)
        if api:
            try:
                uffd.api(features)
            except BaseException:
                uffd.close()
                raise
        return uffd

    def detach(self) -> int:
        """Give up ownership of the fd (e.g. to a native handler) and return it."""
        fd, self._fd = self._fd, -1
        return fd

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<Userfaultfd {state} via={self.opened_via}>"

    # --- ioctls ------------------------------------------------------------------------------

    def _ioctl(self, request: IoctlRequest, arg: Any, op: str, start=None, length=None) -> None:
        rc = lib.uh_ioctl(self.fileno(), request, arg)
        if rc < 0:
            raise UffdError(-rc, op, start, length)

    def api(self, features: Feature = Feature(0)) -> ApiResult:
        """UFFDIO_API. Unknown feature bits are refused by the kernel with EINVAL; this
        names them first by probing what the kernel offers."""
        features = Feature(features)
        if int(features) & ~int(ALL_FEATURES):  # IntFlag's ~ only inverts known bits
            raise UffdError(
                errno.EINVAL, "UFFDIO_API", detail=f"unknown feature bits {int(features):#x}"
            )
        if features:
            offered = probe_api().features
            missing = missing_features(features, offered)
            if missing:
                raise FeatureUnavailable(flag_names(missing), flag_names(offered))
        return self.api_raw(int(features))

    def api_raw(self, features: int, api: int = UFFD_API) -> ApiResult:
        """UFFDIO_API with exactly these bits, no checks (for probing error paths)."""
        arg = ffi.new("struct uh_uffdio_api *", {"api": api, "features": features})
        self._ioctl(IoctlRequest.API, arg, "UFFDIO_API")
        self.features = Feature(features)
        self.ioctls = Ioctl(arg.ioctls)
        return ApiResult(self.features, Feature(arg.features), self.ioctls)

    def register(
        self, target: Target, length: int | None = None, mode: RegisterMode = RegisterMode.MISSING
    ) -> Ioctl:
        """UFFDIO_REGISTER; returns the ioctls allowed on the range."""
        start, length = _as_range(target, length)
        arg = ffi.new(
            "struct uh_uffdio_register *",
            {"range": {"start": start, "len": length}, "mode": int(mode)},
        )
        self._ioctl(IoctlRequest.REGISTER, arg, "UFFDIO_REGISTER", start, length)
        return Ioctl(arg.ioctls)

    def unregister(self, target: Target, length: int | None = None) -> None:
        start, length = _as_range(target, length)
        arg = ffi.new("struct uh_uffdio_range *", {"start": start, "len": length})
        self._ioctl(IoctlRequest.UNREGISTER, arg, "UFFDIO_UNREGISTER", start, length)

    def wake(self, target: Target, length: int | None = None) -> None:
        start, length = _as_range(target, length)
        arg = ffi.new("struct uh_uffdio_range *", {"start": start, "len": length})
        self._ioctl(IoctlRequest.WAKE, arg, "UFFDIO_WAKE", start, length)

    def _counted(self, request, arg, field: str, op: str, start: int, length: int) -> int:
        """Run an ioctl whose s64 ``field`` is bytes done or -errno.

        The kernel returns -EAGAIN with a positive count when it stopped part way (e.g. the
        second page of a COPY already populated), and -errno in the field when nothing was done.
        """
        rc = lib.uh_ioctl(self.fileno(), request, arg)
        result = getattr(arg, field)
        if rc == 0:
            return result
        done = result if result > 0 else 0
        raise UffdError(-rc, op, start, length, done=done)

    def copy(
        self,
        dst: int,
        src: int | bytes | bytearray | memoryview,
        length: int | None = None,
        mode: CopyMode = CopyMode(0),
    ) -> int:
        """UFFDIO_COPY from an address, or from a bytes-like object kept alive for the call.

        Returns bytes copied. ``src`` must not be unpopulated registered memory: the kernel's
        own read would fault and block in handle_userfault() until someone resolves it.
        """
        keep = None
        if isinstance(src, int):
            src_addr = src
            if length is None:
                raise TypeError("copy from an address needs a length")
        else:
            keep = ffi.from_buffer(src)
            src_addr = int(ffi.cast("uintptr_t", keep))
            if length is None:
                length = len(keep)
        arg = ffi.new(
            "struct uh_uffdio_copy *",
            {"dst": dst, "src": src_addr, "len": length, "mode": int(mode)},
        )
        try:
            return self._counted(IoctlRequest.COPY, arg, "copy", "UFFDIO_COPY", dst, length)
        finally:
            del keep

    def zeropage(
        self, target: Target, length: int | None = None, mode: ZeropageMode = ZeropageMode(0)
    ) -> int:
        start, length = _as_range(target, length)
        arg = ffi.new(
            "struct uh_uffdio_zeropage *",
            {"range": {"start": start, "len": length}, "mode": int(mode)},
        )
        return self._counted(
            IoctlRequest.ZEROPAGE, arg, "zeropage", "UFFDIO_ZEROPAGE", start, length
        )

    def writeprotect(
        self,
        target: Target,
        length: int | None = None,
        mode: WriteProtectMode = WriteProtectMode.WP,
    ) -> None:
        """UFFDIO_WRITEPROTECT: mode WP protects, mode 0 unprotects (and wakes)."""
        start, length = _as_range(target, length)
        arg = ffi.new(
            "struct uh_uffdio_writeprotect *",
            {"range": {"start": start, "len": length}, "mode": int(mode)},
        )
        self._ioctl(IoctlRequest.WRITEPROTECT, arg, "UFFDIO_WRITEPROTECT", start, length)

    def continue_(
        self, target: Target, length: int | None = None, mode: ContinueMode = ContinueMode(0)
    ) -> int:
        """UFFDIO_CONTINUE: map the page already in the page cache (minor faults)."""
        start, length = _as_range(target, length)
        arg = ffi.new(
            "struct uh_uffdio_continue *",
            {"range": {"start": start, "len": length}, "mode": int(mode)},
        )
        return self._counted(IoctlRequest.CONTINUE, arg, "mapped", "UFFDIO_CONTINUE", start, length)

    def poison(
        self, target: Target, length: int | None = None, mode: PoisonMode = PoisonMode(0)
    ) -> int:
        """UFFDIO_POISON (6.6): later accesses get SIGBUS as for a hardware memory error."""
        start, length = _as_range(target, length)
        arg = ffi.new(
            "struct uh_uffdio_poison *",
            {"range": {"start": start, "len": length}, "mode": int(mode)},
        )
        return self._counted(IoctlRequest.POISON, arg, "updated", "UFFDIO_POISON", start, length)

    def move(self, dst: int, src: int, length: int, mode: MoveMode = MoveMode(0)) -> int:
        """UFFDIO_MOVE (6.8): remap anonymous pages from src to dst without copying."""
        arg = ffi.new(
            "struct uh_uffdio_move *",
            {"dst": dst, "src": src, "len": length, "mode": int(mode)},
        )
        return self._counted(IoctlRequest.MOVE, arg, "move", "UFFDIO_MOVE", dst, length)

    # --- events ------------------------------------------------------------------------------

    def wait(self, timeout: float | None) -> bool:
        """Poll for readability without holding the GIL; True when a message is waiting."""
        timeout_ms = -1 if timeout is None else max(0, int(timeout * 1000))
        rc = lib.uh_wait_readable(self.fileno(), timeout_ms)
        if rc < 0:
            raise UffdError(-rc, "poll(uffd)")
        return rc > 0

    def read_events(self, max_events: int = 64, timeout: float | None = 0) -> list[Event]:
        """Read up to ``max_events`` messages; waits up to ``timeout`` s (None: forever).

        Returns [] when nothing arrived in time. A fork event carries the child's uffd,
        adopted and owned by the returned object.
        """
        if timeout != 0 and not self.wait(timeout):
            return []
        max_events = min(max_events, len(self._msg_buffer))
        count = lib.uh_read_msgs(self.fileno(), self._msg_buffer, max_events)
        if count < 0:
            if -count == errno.EAGAIN:
                return []
            raise UffdError(-count, "read(uffd)")
        return [self._decode(self._msg_buffer[i]) for i in range(count)]

    def _decode(self, msg: Any) -> Event:
        kind = msg.event
        if kind == EventType.PAGEFAULT:
            fault = msg.arg.pagefault
            return PagefaultEvent(fault.address, FaultFlag(fault.flags), fault.feat.ptid)
        if kind == EventType.FORK:
            child = Userfaultfd(msg.arg.fork.ufd, "fork event", self.features)
            child.ioctls = self.ioctls
            return ForkEvent(child)
        if kind == EventType.REMAP:
            remap = msg.arg.remap  # "from" is a Python keyword: getattr reaches the field
            return RemapEvent(getattr(remap, "from"), remap.to, remap.len)
        if kind == EventType.REMOVE:
            return RemoveEvent(msg.arg.remove.start, msg.arg.remove.end)
        if kind == EventType.UNMAP:
            return UnmapEvent(msg.arg.remove.start, msg.arg.remove.end)
        return UnknownEvent(kind, bytes(ffi.buffer(ffi.addressof(msg), ffi.sizeof(msg))))


_probe_cache: ApiProbe | None = None


def probe_api(refresh: bool = False) -> ApiProbe:
    """Features and ioctls the running kernel offers: UFFDIO_API with features=0 on a
    throw-away uffd reports every feature the kernel supports."""
    global _probe_cache
    if _probe_cache is None or refresh:
        fd, via = _open_fd("auto", int(OpenFlag.CLOEXEC | OpenFlag.NONBLOCK))
        probe = Userfaultfd(fd, via)
        with probe:
            result = probe.api_raw(0)
        _probe_cache = ApiProbe(result.offered, result.ioctls, via)
    return _probe_cache
