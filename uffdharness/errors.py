"""One exception hierarchy: every kernel refusal carries errno name, operation and range."""

from __future__ import annotations

import errno as errno_module
import os


def errno_name(code: int) -> str:
    return errno_module.errorcode.get(code, f"E{code}")


class UffdError(OSError):
    """A userfaultfd or memory call the kernel refused.

    ``done`` is the kernel's partial count in bytes when the ioctl reports one (the s64
    result field of COPY/ZEROPAGE/CONTINUE/POISON/MOVE), else None. ``result_field`` is
    that field as the ioctl left it: bytes done, -errno, or the 0 user space put there
    when the kernel did not write it.
    """

    def __init__(
        self,
        code: int,
        op: str,
        start: int | None = None,
        length: int | None = None,
        done: int | None = None,
        detail: str = "",
        result_field: int | None = None,
    ) -> None:
        self.op = op
        self.start = start
        self.length = length
        self.done = done
        self.detail = detail
        self.result_field = result_field
        super().__init__(code, self._format(code))

    @property
    def errno_name(self) -> str:
        return errno_name(self.errno)

    def _format(self, code: int) -> str:
        where = ""
        if self.start is not None:
            where = f" [{self.start:#x}+{self.length or 0:#x}]"
        text = f"{self.op}{where}: {errno_name(code)} ({os.strerror(code)})"
        if self.done is not None:
            text += f", {self.done} of {self.length} bytes done"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return self.strerror or ""

    def __reduce__(self):  # keep every field when a result crosses a process boundary
        return (
            type(self)._rebuild,
            (
                self.errno,
                self.op,
                self.start,
                self.length,
                self.done,
                self.detail,
                self.result_field,
            ),
        )

    @classmethod
    def _rebuild(cls, *args):
        return cls(*args)


class FeatureUnavailable(UffdError):
    """UFFDIO_API asked for features the running kernel does not offer."""

    def __init__(self, missing_names: list[str], offered_names: list[str] | None = None):
        self.missing = list(missing_names)
        self.offered = list(offered_names or [])
        super().__init__(
            errno_module.EINVAL,
            "UFFDIO_API",
            detail="kernel lacks feature(s) " + ", ".join(self.missing),
        )

    def __reduce__(self):
        return (type(self), (self.missing, self.offered))


class HarnessError(RuntimeError):
    """The harness itself was misused or could not set up (not a kernel verdict)."""


class RegisteredSourceError(UffdError):
    """UFFDIO_COPY refused before the kernel saw it: its source overlaps a range registered
    on the same uffd for MISSING or MINOR faults.

    The kernel reads the source with copy_from_user(); on an unpopulated page of such a
    range that read faults into handle_userfault() and the ioctl sleeps until the fault is
    resolved, by a caller that is itself inside the ioctl. No signal but SIGKILL ends it.
    The errno, EDEADLK (errno.errorcode names it EDEADLOCK), is the harness's, not the
    kernel's.
    """

    def __init__(
        self,
        dst: int,
        length: int,
        src: int,
        registered_start: int,
        registered_length: int,
        modes: list[str],
    ) -> None:
        self.src = src
        self.registered_start = registered_start
        self.registered_length = registered_length
        self.modes = list(modes)
        super().__init__(
            errno_module.EDEADLK,
            "UFFDIO_COPY",
            dst,
            length,
            detail=(
                f"source {src:#x}+{length:#x} overlaps {registered_start:#x}"
                f"+{registered_length:#x}, registered ({'|'.join(self.modes)}) on this uffd: "
                "the kernel's read of an unpopulated page there would fault and block the "
                "ioctl; pass allow_registered_source=True for a populated source"
            ),
        )

    def __reduce__(self):
        return (
            type(self),
            (
                self.start,
                self.length,
                self.src,
                self.registered_start,
                self.registered_length,
                self.modes,
            ),
        )
