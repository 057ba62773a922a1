"""Fault policies: what to do with each fault, one object for every engine.

Built-in policies (``Copy``, ``Fill``, ``FillIndexed``, ``Zeropage``, ``Move``,
``Unprotect``, ``Continue``, ``Never``, wrapped by ``Readahead`` / ``Delay`` and combined
with ``|``) compile to a C ``struct uh_policy``: the native engine runs them without the
GIL, and the Python engines run the same C code through ``FaultContext.apply``. Any other
``Policy`` subclass (or a plain callable) is Python code, so it runs only on the ``thread``
and ``process`` engines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import syscalls as sc
from .._native import ffi, lib
from ..abi import CopyMode
from ..errors import HarnessError
from ..memory import PAGE_SIZE

if TYPE_CHECKING:
    from .context import FaultContext


class Policy:
    """Base of every policy. Subclass and override :meth:`on_fault` for custom logic."""

    def on_fault(self, ctx: FaultContext) -> None:
        """Resolve (or deliberately leave) the fault described by ``ctx``."""
        raise NotImplementedError

    @property
    def is_native(self) -> bool:
        """True when the C core can run it without Python (built-ins only)."""
        return False


class FunctionPolicy(Policy):
    """A callable ``fn(ctx)`` used as a policy."""

    def __init__(self, fn: Callable[[FaultContext], object]) -> None:
        self.fn = fn

    def on_fault(self, ctx: FaultContext) -> None:
        self.fn(ctx)

    def __repr__(self) -> str:
        return f"FunctionPolicy({getattr(self.fn, '__qualname__', self.fn)!r})"


def as_policy(obj: Policy | Callable[[FaultContext], object]) -> Policy:
    if isinstance(obj, Policy):
        return obj
    if callable(obj):
        return FunctionPolicy(obj)
    raise TypeError(f"not a policy: {obj!r}")


# ---- sources --------------------------------------------------------------------------


class HasRange(Protocol):
    addr: int
    length: int


@dataclass
class OpenSource:
    """A source made addressable for the life of a handler."""

    address: int
    length: int
    close: Callable[[], None] = lambda: None
    keep: Any = None  # whatever must stay alive for address to stay valid


class Source:
    """Where COPY or MOVE takes a page from: the fault's offset in its range indexes it."""

    def open(self) -> OpenSource:
        raise NotImplementedError


@dataclass(frozen=True)
class BufferSource(Source):
    """Any object exporting the buffer protocol (bytes, bytearray, memoryview, mmap)."""

    data: Any

    def open(self) -> OpenSource:
        keep = ffi.from_buffer(self.data)
        address = int(ffi.cast("uintptr_t", keep))
        return OpenSource(address, len(keep), keep=keep)


@dataclass(frozen=True)
class RegionSource(Source):
    """Another mapping (a Region, or anything with ``addr`` and ``length``), read live."""

    region: HasRange

    def open(self) -> OpenSource:
        return OpenSource(self.region.addr, self.region.length)


@dataclass(frozen=True)
class Address(Source):
    """A raw address range the caller keeps mapped."""

    addr: int
    length: int

    def open(self) -> OpenSource:
        return OpenSource(self.addr, self.length)


@dataclass(frozen=True)
class FileSource(Source):
    """A file, mapped read-only and private while the handler runs."""

    path: str | os.PathLike[str]

    def open(self) -> OpenSource:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            length = os.fstat(fd).st_size
            if length == 0:
                return OpenSource(0, 0)
            address = sc.mmap(0, length, sc.PROT_READ, sc.MAP_PRIVATE, fd, 0)
        finally:
            os.close(fd)
        return OpenSource(address, length, lambda: sc.munmap(address, length))


def as_source(obj: Any) -> Source:
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return FileSource(obj)
    if hasattr(obj, "addr") and hasattr(obj, "length"):
        return RegionSource(obj)
    try:
        memoryview(obj).release()
    except TypeError:
        raise TypeError(
            f"cannot copy from {type(obj).__name__}: give bytes/a buffer, a Region, a file "
            "path, FileSource or Address"
        ) from None
    return BufferSource(obj)


# ---- built-in actions -----------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One built-in action for one fault kind (a row of struct uh_policy)."""

    code: int
    name: str
    source: Source | None = None
    pattern: bytes = b""
    seed: int = 0
    record: bool = False

    def __repr__(self) -> str:
        return self.name


_KINDS = ("missing", "wp", "minor", "rwp")


class Builtin(Policy):
    """A policy the C core runs: an action per fault kind, a readahead window, a delay."""

    def __init__(
        self,
        *,
        missing: Action | None = None,
        wp: Action | None = None,
        minor: Action | None = None,
        rwp: Action | None = None,
        readahead: int = 1,
        delay_us: int = 0,
        protect: bool = False,
        gone_ok: bool = False,
    ) -> None:
        if readahead < 1:
            raise ValueError(f"readahead must be at least one page, got {readahead}")
        if delay_us < 0:
            raise ValueError(f"delay must be >= 0 us, got {delay_us}")
        self.missing = missing
        self.wp = wp
        self.minor = minor
        self.rwp = rwp
        self.readahead = readahead
        self.delay_us = delay_us
        # COPY/FILL/INDEXED resolve with UFFDIO_COPY_MODE_WP: the page arrives
        # write-protected (registered MISSING|WP), its first write a WP fault.
        self.protect = protect
        self.gone_ok = gone_ok

    @property
    def is_native(self) -> bool:
        # A subclass that overrides on_fault is Python code again.
        return type(self).on_fault is Builtin.on_fault

    def on_fault(self, ctx: FaultContext) -> None:
        ctx.apply(self)

    def _fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {kind: getattr(self, kind) for kind in _KINDS}
        fields.update(
            readahead=self.readahead,
            delay_us=self.delay_us,
            protect=self.protect,
            gone_ok=self.gone_ok,
        )
        return fields

    def __or__(self, other: Builtin) -> Builtin:
        """Combine: each fault kind takes the action of whichever side has one."""
        if not isinstance(other, Builtin):
            return NotImplemented
        merged: dict[str, Any] = {}
        for kind in _KINDS:
            mine, theirs = getattr(self, kind), getattr(other, kind)
            if mine is not None and theirs is not None and mine != theirs:
                raise ValueError(f"both policies handle {kind} faults: {mine!r} and {theirs!r}")
            merged[kind] = mine if mine is not None else theirs
        merged["readahead"] = max(self.readahead, other.readahead)
        merged["delay_us"] = max(self.delay_us, other.delay_us)
        merged["protect"] = self.protect or other.protect
        merged["gone_ok"] = self.gone_ok or other.gone_ok
        return Builtin(**merged)

    def actions(self) -> dict[str, Action]:
        return {kind: getattr(self, kind) for kind in _KINDS if getattr(self, kind)}

    def __repr__(self) -> str:
        parts = [f"{kind}={action!r}" for kind, action in self.actions().items()]
        if self.readahead > 1:
            parts.append(f"readahead={self.readahead}")
        if self.delay_us:
            parts.append(f"delay_us={self.delay_us}")
        if self.protect:
            parts.append("protect")
        if self.gone_ok:
            parts.append("gone_ok")
        return f"Builtin({', '.join(parts)})"

    def compile(self, resources: Resources) -> Any:
        """The ``struct uh_policy`` for this policy; sources are opened in ``resources``."""
        config = ffi.new("struct uh_policy *")
        config.readahead = self.readahead
        config.delay_us = self.delay_us
        config.copy_mode = int(CopyMode.WP) if self.protect else 0
        config.gone_ok = int(self.gone_ok)
        for kind, action in self.actions().items():
            setattr(config, kind, action.code)
            if action.source is not None:
                opened = resources.open(action.source)
                config.src = opened.address
                config.src_len = opened.length
            if action.pattern:
                config.pattern = resources.keep(ffi.new("char[]", action.pattern))
                config.pattern_len = len(action.pattern)
            if action.code == lib.UH_ACT_INDEXED:
                config.seed = action.seed
            if action.code in (lib.UH_ACT_UNPROTECT, lib.UH_ACT_RWP_UNPROTECT):
                config.record_wp = int(action.record)
        return config


class Copy(Builtin):
    """Missing faults: UFFDIO_COPY the page from ``source`` at the same offset (bytes past
    the end of the source arrive as zeros); ``protect``: with UFFDIO_COPY_MODE_WP."""

    def __init__(self, source: Any, *, protect: bool = False) -> None:
        super().__init__(
            missing=Action(lib.UH_ACT_COPY, "copy", source=as_source(source)), protect=protect
        )


class Fill(Builtin):
    """Missing faults: UFFDIO_COPY of ``pattern`` repeated from the range start (the content
    ``Region.fill(pattern)`` would write)."""

    def __init__(self, pattern: bytes) -> None:
        if not pattern:
            raise ValueError("empty fill pattern")
        super().__init__(missing=Action(lib.UH_ACT_FILL, "fill", pattern=bytes(pattern)))


class FillIndexed(Builtin):
    """Missing faults: UFFDIO_COPY of the content ``Region.fill_indexed(seed)`` writes, so
    ``Region.find_indexed_mismatch(seed)`` verifies every page; ``protect``: with
    UFFDIO_COPY_MODE_WP."""

    def __init__(self, seed: int = 0, *, protect: bool = False) -> None:
        super().__init__(missing=Action(lib.UH_ACT_INDEXED, "indexed", seed=seed), protect=protect)


class Zeropage(Builtin):
    """Missing faults: UFFDIO_ZEROPAGE (not offered on hugetlb: EINVAL)."""

    def __init__(self) -> None:
        super().__init__(missing=Action(lib.UH_ACT_ZEROPAGE, "zeropage"))


class Move(Builtin):
    """Missing faults: UFFDIO_MOVE (6.8) the page from ``source`` at the same offset. The
    source lives in the uffd's address space and must hold exclusive anonymous pages."""

    def __init__(self, source: HasRange | Address) -> None:
        super().__init__(missing=Action(lib.UH_ACT_MOVE, "move", source=as_source(source)))


class Unprotect(Builtin):
    """Write-protect faults: UFFDIO_WRITEPROTECT mode 0; ``record`` logs each faulting
    address first (``HandlerStats.wp_addresses``)."""

    def __init__(self, record: bool = False) -> None:
        super().__init__(
            wp=Action(
                lib.UH_ACT_UNPROTECT, "unprotect+record" if record else "unprotect", record=record
            )
        )


class RwpUnprotect(Builtin):
    """Read-write-protection faults (7.3): UFFDIO_RWPROTECT without MODE_RWP restores
    access and wakes; ``record`` logs each faulting address first
    (``HandlerStats.wp_addresses``, shared with Unprotect: a VMA has WP or RWP, never both)."""

    def __init__(self, record: bool = False) -> None:
        super().__init__(
            rwp=Action(
                lib.UH_ACT_RWP_UNPROTECT,
                "rwp-unprotect+record" if record else "rwp-unprotect",
                record=record,
            )
        )


class Continue(Builtin):
    """Minor faults: UFFDIO_CONTINUE maps the page already in the page cache."""

    def __init__(self) -> None:
        super().__init__(minor=Action(lib.UH_ACT_CONTINUE, "continue"))


class Never(Builtin):
    """Read every fault and resolve none (for hang detection); stop() releases them."""

    def __init__(self) -> None:
        never = Action(lib.UH_ACT_NEVER, "never")
        super().__init__(missing=never, wp=never, minor=never, rwp=never)


class Readahead(Builtin):
    """Resolve a window of ``pages`` pages from the faulting one per fault, skipping pages
    already present (EEXIST is not an error)."""

    def __init__(self, policy: Builtin, pages: int) -> None:
        base = _builtin(policy)
        super().__init__(**{**base._fields(), "readahead": pages})


class Delay(Builtin):
    """Wait ``us`` microseconds before resolving each fault (stop() cuts the wait short)."""

    def __init__(self, policy: Builtin, us: int) -> None:
        base = _builtin(policy)
        super().__init__(**{**base._fields(), "delay_us": us})


class GoneOk(Builtin):
    """``policy``, but a fault whose range was unregistered while it was in flight (the
    resolving ioctl fails ENOENT: nobody waits there any more) is dropped, counted in
    ``errors``, instead of failing the handler: for a monitor that unregisters ranges
    while it serves others, as uffd-stress does between bounces."""

    def __init__(self, policy: Builtin) -> None:
        base = _builtin(policy)
        super().__init__(**{**base._fields(), "gone_ok": True})


def _builtin(policy: Policy) -> Builtin:
    if not isinstance(policy, Builtin) or not policy.is_native:
        raise TypeError(f"{policy!r} is not a built-in policy")
    return policy


# ---- resources held while a handler runs -----------------------------------------------


@dataclass
class Resources:
    """Opened sources and kept-alive buffers; closed once when the handler stops."""

    _opened: dict[int, OpenSource] = field(default_factory=dict)
    _keep: list[Any] = field(default_factory=list)

    def open(self, source: Source) -> OpenSource:
        opened = self._opened.get(id(source))
        if opened is None:
            opened = source.open()
            self._opened[id(source)] = opened
            self._keep.append(source)
        return opened

    def populate(self) -> None:
        """Map every source page into this process's page tables. A forked helper does not
        inherit the page tables of shared mappings, and UFFDIO_COPY first reads the source
        with page faults disabled: an unmapped source page makes the kernel fall back to a
        slower path (drop locks, copy with faults allowed, retry)."""
        for opened in self._opened.values():
            if opened.length:
                try:
                    start = opened.address & ~(PAGE_SIZE - 1)
                    length = opened.address + opened.length - start
                    sc.madvise(start, length, sc.MADV_POPULATE_READ)
                except OSError:
                    pass  # a hint only: COPY still works on the slower path

    def keep(self, obj: Any) -> Any:
        self._keep.append(obj)
        return obj

    def close(self) -> None:
        errors = []
        for opened in self._opened.values():
            try:
                opened.close()
            except OSError as exc:
                errors.append(exc)
        self._opened.clear()
        self._keep.clear()
        if errors:
            raise errors[0]


def require_native(policy: Policy) -> Builtin:
    if isinstance(policy, Builtin) and policy.is_native:
        return policy
    raise HarnessError(
        f"{policy!r} is Python code: the native engine runs only built-in policies "
        "(Copy, Fill, FillIndexed, Zeropage, Move, Unprotect, Continue, Never, Readahead, "
        "Delay and their | combinations); use engine='thread' or engine='process'"
    )
