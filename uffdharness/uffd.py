"""The userfaultfd object: open, negotiate the API, register ranges, resolve faults, read events."""

from __future__ import annotations

import errno
import threading
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
    RwprotectMode,
    WriteProtectMode,
    ZeropageMode,
    capabilities_needed,
    flag_names,
    missing_features,
)
from .errors import FeatureUnavailable, RegisteredSourceError, UffdError, errno_name
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


U64_END = 1 << 64


def _refuse_non_u64(op: str, start: int, length: int, **others: int) -> None:
    """Every address and length of a range ioctl is a __u64: refuse a negative or too large
    value as the kernel would refuse a bad range (EINVAL), before cffi's OverflowError."""
    for name, value in (("address", start), ("length", length), *others.items()):
        if isinstance(value, int) and not 0 <= value < U64_END:
            raise UffdError(
                errno.EINVAL, op, start, length, detail=f"{name} {value:#x} is not a __u64"
            )


# Register modes whose faults a plain read raises: MISSING on an empty page, MINOR on a page
# in the page cache with no PTE. A WP-only range never faults on a read.
READ_FAULTING_MODES = RegisterMode.MISSING | RegisterMode.MINOR
# smaps VmFlags of a VMA registered for those modes.
READ_FAULTING_VM_FLAGS = frozenset({"um", "ui"})


class _Registrations:
    """The ranges one Userfaultfd object registered, each with every mode asked for it.

    Kept from register/unregister, so it goes stale when a registered range is unmapped or
    moved: it only says where to look in smaps, never decides alone.
    """

    def __init__(self) -> None:
        self._spans: tuple[tuple[int, int, RegisterMode], ...] = ()
        self._lock = threading.Lock()  # register/unregister may race from several threads

    @staticmethod
    def _without(spans, start: int, end: int):
        kept = []
        for first, last, mode in spans:
            if last <= start or first >= end:
                kept.append((first, last, mode))
                continue
            if first < start:
                kept.append((first, start, mode))
            if last > end:
                kept.append((end, last, mode))
        return kept

    def add(self, start: int, end: int, mode: RegisterMode) -> None:
        with self._lock:
            modes = mode
            for first, last, old in self._spans:
                if first < end and last > start:
                    modes |= old  # kept conservative: every mode ever asked for here
            spans = self._without(self._spans, start, end) + [(start, end, modes)]
            self._spans = tuple(sorted(spans, key=lambda span: span[0]))

    def remove(self, start: int, end: int) -> None:
        with self._lock:
            self._spans = tuple(self._without(self._spans, start, end))

    def overlapping(self, start: int, end: int, modes: RegisterMode):
        return [
            span for span in self._spans if span[0] < end and span[1] > start and span[2] & modes
        ]


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


# userfaultfd_syscall_allowed() in fs/userfaultfd.c (5.11 on): without UFFD_USER_MODE_ONLY
# the syscall needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1, else EPERM.
SYSCALL_EPERM = (
    "kernel-mode faults need CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1; "
    "UFFD_USER_MODE_ONLY (5.11) needs neither"
)
# The device itself checks nothing more: opening the node is the permission.
DEV_EACCES = "no read/write permission on /dev/userfaultfd (root-only 0600 by default)"


def _syscall_refusal(code: int, flags: int) -> str:
    if code == errno.EPERM and not flags & OpenFlag.USER_MODE_ONLY:
        return SYSCALL_EPERM
    if code == errno.EINVAL and flags & OpenFlag.USER_MODE_ONLY:
        return "UFFD_USER_MODE_ONLY needs kernel >= 5.11"
    if code == errno.ENOSYS:
        return "no userfaultfd(2) (CONFIG_USERFAULTFD off, or filtered by seccomp)"
    return ""


def _dev_refusal(code: int) -> str:
    if code == errno.EACCES:
        return DEV_EACCES
    if code == errno.ENOENT:
        return "no /dev/userfaultfd (added in 6.1)"
    return ""


def _open_fd(via: OpenVia, flags: int) -> tuple[int, str]:
    """Returns (fd, "syscall" | "/dev/userfaultfd")."""
    syscall_refused = ""
    if via in ("auto", "syscall"):
        fd = lib.uh_userfaultfd_syscall(flags)
        if fd >= 0:
            return fd, "syscall"
        # EPERM: kernel-mode faults refused to this process; ENOSYS: no syscall.
        if via == "syscall" or -fd not in (errno.EPERM, errno.ENOSYS):
            raise UffdError(-fd, "userfaultfd(2)", detail=_syscall_refusal(-fd, flags))
        syscall_refused = f"userfaultfd(2) gave {errno_name(-fd)}"
        reason = _syscall_refusal(-fd, flags)
        syscall_refused += f" ({reason})" if reason else ""
    fd = lib.uh_userfaultfd_dev(flags)
    if fd < 0:
        why = [_dev_refusal(-fd), syscall_refused]
        detail = "/dev/userfaultfd (6.1)" + "".join(f"; {part}" for part in why if part)
        raise UffdError(-fd, "USERFAULTFD_IOC_NEW", detail=detail)
    return fd, "/dev/userfaultfd"


def _open_flags(cloexec: bool, nonblock: bool, user_mode_only: bool) -> int:
    flags = OpenFlag(0)
    if cloexec:
        flags |= OpenFlag.CLOEXEC
    if nonblock:
        flags |= OpenFlag.NONBLOCK
    if user_mode_only:
        flags |= OpenFlag.USER_MODE_ONLY
    return int(flags)


def open_refusal(via: Literal["syscall", "dev"], user_mode_only: bool) -> UffdError | None:
    """Open and close a uffd this one way: None if it opened, else the kernel's refusal."""
    try:
        fd, _ = _open_fd(via, _open_flags(True, True, user_mode_only))
    except UffdError as refusal:
        return refusal
    Userfaultfd(fd).close()
    return None


class Userfaultfd(OwnedFd):
    """One userfaultfd file descriptor; owns it and closes it exactly once.

    ``user_mode_only``: opened with UFFD_USER_MODE_ONLY (5.11), so a fault the kernel's own
    access raises (read(2) into registered memory, UFFDIO_COPY's read of its source) is not
    queued: handle_userfault() gives VM_FAULT_SIGBUS and the syscall fails with EFAULT.
    """

    _what = "userfaultfd"

    def __init__(
        self,
        fd: int,
        opened_via: str = "adopted",
        features: Feature | None = None,
        *,
        user_mode_only: bool = False,
    ):
        self._fd = fd
        self.opened_via = opened_via
        self.features: Feature | None = features
        self.ioctls: Ioctl | None = None
        self.user_mode_only = user_mode_only
        self._registrations = _Registrations()
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
        ``user_mode_only`` opens with UFFD_USER_MODE_ONLY: allowed to every user (5.11 on),
        but only faults raised in user mode reach the handler.
        """
        flags = _open_flags(cloexec, nonblock, user_mode_only)
        fd, opened_via = _open_fd(via, flags)
        uffd = cls(fd, opened_via, user_mode_only=user_mode_only)
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
            # Probed the way this uffd was opened: a user who may only have a
            # user-mode-only uffd gets EPERM/EACCES for any other.
            offered = probe_api(user_mode_only=self.user_mode_only).features
            missing = missing_features(features, offered)
            if missing:
                raise FeatureUnavailable(flag_names(missing), flag_names(offered))
        try:
            return self.api_raw(int(features))
        except UffdError as refusal:
            needed = capabilities_needed(features)
            if refusal.errno != errno.EPERM or not needed:
                raise
            detail = ", ".join(f"UFFD_FEATURE_{name} needs {cap}" for name, cap in needed.items())
            raise UffdError(errno.EPERM, "UFFDIO_API", detail=detail) from None

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
        _refuse_non_u64("UFFDIO_REGISTER", start, length)
        arg = ffi.new(
            "struct uh_uffdio_register *",
            {"range": {"start": start, "len": length}, "mode": int(mode)},
        )
        self._ioctl(IoctlRequest.REGISTER, arg, "UFFDIO_REGISTER", start, length)
        self._registrations.add(start, start + length, RegisterMode(mode))
        return Ioctl(arg.ioctls)

    def unregister(self, target: Target, length: int | None = None) -> None:
        start, length = _as_range(target, length)
        _refuse_non_u64("UFFDIO_UNREGISTER", start, length)
        arg = ffi.new("struct uh_uffdio_range *", {"start": start, "len": length})
        self._ioctl(IoctlRequest.UNREGISTER, arg, "UFFDIO_UNREGISTER", start, length)
        self._registrations.remove(start, start + length)

    def wake(self, target: Target, length: int | None = None) -> None:
        start, length = _as_range(target, length)
        _refuse_non_u64("UFFDIO_WAKE", start, length)
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
        raise UffdError(-rc, op, start, length, done=done, result_field=result)

    def copy(
        self,
        dst: int,
        src: int | bytes | bytearray | memoryview,
        length: int | None = None,
        mode: CopyMode = CopyMode(0),
        *,
        allow_registered_source: bool = False,
    ) -> int:
        """UFFDIO_COPY from an address, or from a bytes-like object kept alive for the call.

        Returns bytes copied. A source overlapping a range this object registered for
        MISSING or MINOR faults (and still registered, by smaps) is refused with
        RegisteredSourceError: the kernel's own read of an unpopulated page there faults
        into handle_userfault() and the ioctl sleeps until someone resolves that fault,
        which no signal but SIGKILL interrupts. ``allow_registered_source=True`` copies
        anyway, for a source known to be populated.
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
        _refuse_non_u64("UFFDIO_COPY", dst, length, source=src_addr)
        if not allow_registered_source:
            self._refuse_registered_source(dst, src_addr, length)
        arg = ffi.new(
            "struct uh_uffdio_copy *",
            {"dst": dst, "src": src_addr, "len": length, "mode": int(mode)},
        )
        try:
            return self._counted(IoctlRequest.COPY, arg, "copy", "UFFDIO_COPY", dst, length)
        finally:
            del keep

    def _refuse_registered_source(self, dst: int, src: int, length: int) -> None:
        if length <= 0:
            return  # the kernel refuses it (EINVAL) without reading the source
        spans = self._registrations.overlapping(src, src + length, READ_FAULTING_MODES)
        if not spans:
            return
        from .maps import read_smaps_range  # only when the table says to look

        live = [
            vma
            for vma in read_smaps_range(src, src + length)
            if vma.vm_flags & READ_FAULTING_VM_FLAGS
        ]
        if live:
            first, last, mode = spans[0]
            raise RegisteredSourceError(dst, length, src, first, last - first, flag_names(mode))

    def zeropage(
        self, target: Target, length: int | None = None, mode: ZeropageMode = ZeropageMode(0)
    ) -> int:
        start, length = _as_range(target, length)
        _refuse_non_u64("UFFDIO_ZEROPAGE", start, length)
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
        _refuse_non_u64("UFFDIO_WRITEPROTECT", start, length)
        arg = ffi.new(
            "struct uh_uffdio_writeprotect *",
            {"range": {"start": start, "len": length}, "mode": int(mode)},
        )
        self._ioctl(IoctlRequest.WRITEPROTECT, arg, "UFFDIO_WRITEPROTECT", start, length)

    def rwprotect(
        self,
        target: Target,
        length: int | None = None,
        *,
        protect: bool = True,
        dontwake: bool = False,
    ) -> None:
        """UFFDIO_RWPROTECT (7.3) on a range registered with RegisterMode.RWP.

        ``protect`` makes the range's *present* PTEs inaccessible (PROT_NONE hinting, the
        frames stay resident; unpopulated addresses are not protected). ``protect=False``
        restores access and wakes the threads blocked on the range unless ``dontwake``.
        """
        start, length = _as_range(target, length)
        _refuse_non_u64("UFFDIO_RWPROTECT", start, length)
        mode = RwprotectMode(0)
        if protect:
            mode |= RwprotectMode.RWP
        if dontwake:
            mode |= RwprotectMode.DONTWAKE
        self.rwprotect_raw(start, length, int(mode))

    def rwprotect_raw(self, start: int, length: int, mode: int) -> None:
        """UFFDIO_RWPROTECT with exactly these mode bits (for probing error paths)."""
        arg = ffi.new(
            "struct uh_uffdio_rwprotect *",
            {"range": {"start": start, "len": length}, "mode": mode},
        )
        self._ioctl(IoctlRequest.RWPROTECT, arg, "UFFDIO_RWPROTECT", start, length)

    def set_mode(self, enable: Feature = Feature(0), disable: Feature = Feature(0)) -> None:
        """UFFDIO_SET_MODE (7.3): switch a toggleable feature (only RWP_ASYNC so far) on or
        off on this initialised uffd without re-registering. The kernel takes mmap_lock for
        writing and drains in-flight per-VMA-locked faults; switching to async wakes the
        blocked faulters, which then resolve themselves. A bit in both is EINVAL."""
        arg = ffi.new(
            "struct uh_uffdio_set_mode *", {"enable": int(enable), "disable": int(disable)}
        )
        rc = lib.uh_ioctl(self.fileno(), IoctlRequest.SET_MODE, arg)
        if rc < 0:
            raise UffdError(
                -rc,
                "UFFDIO_SET_MODE",
                detail=f"enable={flag_names(Feature(enable))} "
                f"disable={flag_names(Feature(disable))}",
            )
        if self.features is not None:
            self.features = Feature((int(self.features) | int(enable)) & ~int(disable))

    def continue_(
        self, target: Target, length: int | None = None, mode: ContinueMode = ContinueMode(0)
    ) -> int:
        """UFFDIO_CONTINUE: map the page already in the page cache (minor faults)."""
        start, length = _as_range(target, length)
        _refuse_non_u64("UFFDIO_CONTINUE", start, length)
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
        _refuse_non_u64("UFFDIO_POISON", start, length)
        arg = ffi.new(
            "struct uh_uffdio_poison *",
            {"range": {"start": start, "len": length}, "mode": int(mode)},
        )
        return self._counted(IoctlRequest.POISON, arg, "updated", "UFFDIO_POISON", start, length)

    def move(self, dst: int, src: int, length: int, mode: MoveMode = MoveMode(0)) -> int:
        """UFFDIO_MOVE (6.8): remap anonymous pages from src to dst without copying.

        Unlike COPY, a registered source is no hazard: move_pages() walks the source's page
        tables and gives ENOENT for a hole (unless ALLOW_SRC_HOLES), never faulting on it.
        """
        _refuse_non_u64("UFFDIO_MOVE", dst, length, source=src)
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
            # dup_userfaultfd() gives the child's uffd the parent's flags.
            child = Userfaultfd(
                msg.arg.fork.ufd, "fork event", self.features, user_mode_only=self.user_mode_only
            )
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


_probe_cache: dict[bool, ApiProbe] = {}  # by user_mode_only: the open flags that matter


def probe_api(refresh: bool = False, *, user_mode_only: bool = False) -> ApiProbe:
    """Features and ioctls the running kernel offers: UFFDIO_API with features=0 on a
    throw-away uffd reports every feature the kernel supports. The uffd is opened with
    ``user_mode_only`` as the caller's was, since that decides whether it opens at all."""
    if refresh or user_mode_only not in _probe_cache:
        fd, via = _open_fd("auto", _open_flags(True, True, user_mode_only))
        with Userfaultfd(fd, via, user_mode_only=user_mode_only) as probe:
            result = probe.api_raw(0)
        _probe_cache[user_mode_only] = ApiProbe(result.offered, result.ioctls, via)
    return _probe_cache[user_mode_only]
