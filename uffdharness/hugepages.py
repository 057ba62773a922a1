"""The hugetlb page pool: counts per page size and a reservation context manager.

Kernel semantics that shape this module (mm/hugetlb.c):

- Writing ``nr_hugepages`` sets the *persistent* pool size. The kernel allocates pages
  until it reaches the target or fails, and the write still succeeds when it falls short
  (no ENOMEM; a pending signal also ends the loop early). Only reading the value back
  tells how many were granted.
- The value read back from ``nr_hugepages`` is the total, persistent plus surplus. Surplus
  pages appear when the pool is lowered while pages are still mapped: lowering always
  succeeds, in-use pages above the new target turn into surplus and the kernel frees each
  one when its last user releases it. So the pool arithmetic here works on
  ``persistent = nr_hugepages - surplus_hugepages``, and restoring the old value while a
  mapping still exists is correct: those pages go away at unmap.

A process killed by SIGKILL (or the OOM killer) cannot give its pages back. Every
reservation is therefore written to a ledger beside the lock file (pid, the process's start
time, page size, pages added); whoever takes the lock next gives back the shares of owners
that no longer exist, so a killed run's pages return at the next run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import itertools
import json
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

__all__ = [
    "HugepageCounts",
    "HugepageError",
    "HugepagePool",
    "available",
    "counts",
    "default_size_kb",
    "free_pages",
    "nr_hugepages_path",
    "pool_frozen",
    "reclaim_orphans",
    "sizes",
]

SYSFS_HUGEPAGES = "/sys/kernel/mm/hugepages"
PROC_NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"
PROC_MEMINFO = "/proc/meminfo"

_SIZE_DIR_RE = re.compile(r"hugepages-(\d+)kB$")

# Signals whose delivery is held back while the pool size is being changed, so that a
# Ctrl-C, a pytest-timeout SIGALRM or a SIGTERM cannot land between reading and writing
# nr_hugepages and leave the pool changed with nobody owning the change.
_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)

_thread_lock = threading.Lock()
_serials = itertools.count()
_frozen_lock_fd: int | None = None  # pool_frozen()'s lock, held for a whole block


class HugepageError(OSError):
    """The hugepage pool could not be changed as asked (errno says why)."""


@dataclass(frozen=True)
class HugepageCounts:
    """One hugepage size's pool counters (sysfs ``hugepages-<size>kB/*``)."""

    size_kb: int
    nr: int
    free: int
    resv: int
    surplus: int
    overcommit: int

    @property
    def persistent(self) -> int:
        """Pages that stay in the pool when unused (what writing nr_hugepages sets)."""
        return self.nr - self.surplus

    @property
    def available(self) -> int:
        """Free pages not promised to an existing mapping's reservation."""
        return max(self.free - self.resv, 0)

    def to_json(self) -> dict[str, int]:
        return {
            "size_kb": self.size_kb,
            "nr": self.nr,
            "free": self.free,
            "resv": self.resv,
            "surplus": self.surplus,
            "overcommit": self.overcommit,
        }


def sizes() -> list[int]:
    """Hugepage sizes (kB) the kernel supports, ascending; [] without hugetlb."""
    found = []
    for path in glob.glob(os.path.join(SYSFS_HUGEPAGES, "hugepages-*kB")):
        match = _SIZE_DIR_RE.search(path)
        if match:
            found.append(int(match.group(1)))
    if not found:
        default = default_size_kb()
        if default is not None:
            found.append(default)
    return sorted(found)


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(PROC_MEMINFO) as meminfo:
            for line in meminfo:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    values[key.strip()] = int(fields[0])
    except FileNotFoundError:
        pass
    return values


def default_size_kb() -> int | None:
    """The default hugepage size (``Hugepagesize`` in /proc/meminfo), None without hugetlb."""
    return _meminfo().get("Hugepagesize")


def _sysfs_dir(size_kb: int) -> str:
    return os.path.join(SYSFS_HUGEPAGES, f"hugepages-{size_kb}kB")


def _read_int(path: str) -> int:
    with open(path) as counter:
        return int(counter.read().strip())


def counts(size_kb: int = 2048) -> HugepageCounts:
    """Current pool counters for one hugepage size."""
    directory = _sysfs_dir(size_kb)
    if os.path.isdir(directory):

        def counter(name: str) -> int:
            return _read_int(os.path.join(directory, name))

        return HugepageCounts(
            size_kb=size_kb,
            nr=counter("nr_hugepages"),
            free=counter("free_hugepages"),
            resv=counter("resv_hugepages"),
            surplus=counter("surplus_hugepages"),
            overcommit=counter("nr_overcommit_hugepages"),
        )
    # Without sysfs (a minimal guest) /proc/meminfo still describes the default size.
    meminfo = _meminfo()
    if meminfo.get("Hugepagesize") == size_kb and "HugePages_Total" in meminfo:
        overcommit_path = "/proc/sys/vm/nr_overcommit_hugepages"
        return HugepageCounts(
            size_kb=size_kb,
            nr=meminfo["HugePages_Total"],
            free=meminfo["HugePages_Free"],
            resv=meminfo["HugePages_Rsvd"],
            surplus=meminfo["HugePages_Surp"],
            overcommit=_read_int(overcommit_path) if os.path.exists(overcommit_path) else 0,
        )
    raise HugepageError(errno.ENOENT, f"kernel offers no {size_kb}kB hugepages")


def free_pages(size_kb: int = 2048) -> int:
    """Free pages of this size in the pool (some may be reserved by existing mappings)."""
    return counts(size_kb).free


def available(size_kb: int = 2048) -> int:
    """Pages of this size a new mapping can still get: free minus reserved."""
    return counts(size_kb).available


def nr_hugepages_path(size_kb: int = 2048) -> str:
    """The file whose value sets the persistent pool size for this page size."""
    sysfs_path = os.path.join(_sysfs_dir(size_kb), "nr_hugepages")
    if os.path.exists(sysfs_path):
        return sysfs_path
    if default_size_kb() == size_kb and os.path.exists(PROC_NR_HUGEPAGES):
        return PROC_NR_HUGEPAGES
    raise HugepageError(errno.ENOENT, f"kernel offers no {size_kb}kB hugepages")


def _write_pool_size(path: str, pages: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except PermissionError as error:
        raise HugepageError(
            error.errno, f"need root to write {path}: {errno.errorcode[error.errno]}"
        ) from error
    except OSError as error:
        raise HugepageError(
            error.errno, f"cannot open {path}: {errno.errorcode.get(error.errno, error.errno)}"
        ) from error
    try:
        os.write(fd, f"{pages}\n".encode())
    except OSError as error:
        raise HugepageError(
            error.errno,
            f"writing {pages} to {path}: {errno.errorcode.get(error.errno, error.errno)}",
        ) from error
    finally:
        os.close(fd)


def _lock_path() -> str:
    for directory in ("/run/lock", "/run", tempfile.gettempdir()):
        if os.access(directory, os.W_OK):
            return os.path.join(directory, "uffdharness-hugepages.lock")
    return os.path.join(tempfile.gettempdir(), "uffdharness-hugepages.lock")


def _ledger_path() -> str:
    return _lock_path()[: -len(".lock")] + ".ledger"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (/proc/PID/stat field 22), None if gone: with
    the pid it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _read_ledger() -> list[dict[str, int]]:
    try:
        with open(_ledger_path()) as ledger:
            entries = json.load(ledger)
    except (OSError, ValueError):
        return []
    keys = ("pid", "start", "serial", "size_kb", "added")
    if not isinstance(entries, list):
        return []
    return [
        e for e in entries if isinstance(e, dict) and all(isinstance(e.get(k), int) for k in keys)
    ]


def _write_ledger(entries: list[dict[str, int]]) -> None:
    path = _ledger_path()
    temporary = f"{path}.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(temporary, "w") as ledger:
            json.dump(entries, ledger)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _reclaim_orphans() -> list[dict[str, int]]:
    """Give back what dead owners reserved; the ledger of the living. Caller holds the lock."""
    living = []
    for entry in _read_ledger():
        if _start_time(entry["pid"]) == entry["start"]:
            living.append(entry)
            continue
        try:
            now = counts(entry["size_kb"]).persistent
            _write_pool_size(nr_hugepages_path(entry["size_kb"]), max(now - entry["added"], 0))
        except (HugepageError, OSError):
            living.append(entry)  # try again next time
    return living


def reclaim_orphans() -> int:
    """Give back the hugepages of reservations whose owner was killed; the pages returned."""
    if os.geteuid() != 0:
        return 0
    with signals_deferred(), _pool_lock():
        before = _read_ledger()
        living = _reclaim_orphans()
        _write_ledger(living)
    kept = {(e["pid"], e["start"]) for e in living}
    return sum(e["added"] for e in before if (e["pid"], e["start"]) not in kept)


def _open_lock() -> int | None:
    try:
        return os.open(_lock_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return None  # still serialised within this process


@contextlib.contextmanager
def _pool_lock() -> Iterator[None]:
    """Serialise read-modify-write of nr_hugepages across threads and harness processes."""
    with _thread_lock:
        if os.geteuid() != 0 or _frozen_lock_fd is not None:
            # Not root: the write will fail anyway; do not leave a lock file owned by this
            # user where fs.protected_regular would stop root from opening it later.
            # Frozen: this process already holds the lock (pool_frozen).
            yield
            return
        lock_fd = _open_lock()
        try:
            if lock_fd is not None:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            yield
        finally:
            if lock_fd is not None:
                os.close(lock_fd)


@contextlib.contextmanager
def pool_frozen() -> Iterator[None]:
    """Hold the harness's pool lock for the whole block: no other harness process grows or
    shrinks the pool meanwhile (they wait), so the block may assert exact pool sizes.
    HugepagePools entered inside it, from any thread of this process, work as usual.
    Keep it short, and start no other harness process that reserves hugepages inside it."""
    global _frozen_lock_fd
    if os.geteuid() != 0:
        yield
        return
    with _thread_lock:
        if _frozen_lock_fd is not None:
            raise RuntimeError("pool_frozen() does not nest")
        lock_fd = _open_lock()
        if lock_fd is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        _frozen_lock_fd = lock_fd if lock_fd is not None else -1
    try:
        yield
    finally:
        with _thread_lock:
            if _frozen_lock_fd >= 0:
                os.close(_frozen_lock_fd)
            _frozen_lock_fd = None


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM/SIGALRM for the block, then deliver what arrived."""
    if threading.current_thread() is not threading.main_thread():
        # Python runs signal handlers only in the main thread; nothing to defer here.
        yield
        return
    arrived: list[int] = []

    def note(signum: int, _frame: object) -> None:
        arrived.append(signum)

    previous = {}
    try:
        for signum in _DEFERRED_SIGNALS:
            # None means a handler installed outside Python: it could not be put back.
            if signal.getsignal(signum) is not None:
                previous[signum] = signal.signal(signum, note)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


class HugepagePool:
    """Reserve ``count`` more hugepages of ``size_kb`` (default: the system's default size)
    for the duration of a ``with`` block.

    Entering raises the persistent pool by ``count`` and checks the kernel granted all of
    them; if not, the pool is put back and :class:`HugepageError` (ENOMEM) says how many
    were granted. Leaving lowers the pool by what this object added, on any exit path.
    Pools nest and overlap freely (also across threads and harness processes): each one
    adds and later subtracts its own share under a lock, so the original value returns
    once all have exited. A child forked inside the block does not give the pages back;
    the process that entered owns the reservation.
    """

    def __init__(self, count: int, size_kb: int | None = None) -> None:
        if count < 0:
            raise ValueError(f"hugepage count must be >= 0, got {count}")
        self.count = count
        # Default: the default hugepage size, which MFD_HUGETLB without a size flag maps.
        self.size_kb = size_kb or default_size_kb() or 2048
        self.persistent_before: int | None = None
        self._added = 0
        self._owner_pid: int | None = None
        self._entry: dict[str, int] | None = None  # this reservation's ledger entry

    def __repr__(self) -> str:
        state = "active" if self._owner_pid is not None else "idle"
        return f"HugepagePool(count={self.count}, size_kb={self.size_kb}, {state})"

    @property
    def active(self) -> bool:
        return self._owner_pid is not None

    def __enter__(self) -> HugepagePool:
        if self._owner_pid is not None:
            raise RuntimeError(f"{self!r} is already entered")
        path = nr_hugepages_path(self.size_kb)
        with signals_deferred(), _pool_lock():
            ledger = _reclaim_orphans() if os.geteuid() == 0 else []
            before = counts(self.size_kb).persistent
            if self.count:
                _write_pool_size(path, before + self.count)
                granted = counts(self.size_kb).persistent - before
                if granted < self.count:
                    _write_pool_size(path, before)
                    raise HugepageError(
                        errno.ENOMEM,
                        f"asked for {self.count} more {self.size_kb}kB hugepages, kernel "
                        f"granted {max(granted, 0)} (pool {before} -> {before + granted}; the "
                        f"kernel stops when it finds no free contiguous memory or a signal "
                        f"arrives); pool restored to {before}",
                    )
            self.persistent_before = before
            self._added = self.count
            self._owner_pid = os.getpid()
            if self.count and os.geteuid() == 0:
                self._entry = {
                    "pid": os.getpid(),
                    "start": _start_time(os.getpid()) or 0,
                    "serial": next(_serials),  # two pools of one process stay apart
                    "size_kb": self.size_kb,
                    "added": self.count,
                }
                _write_ledger([*ledger, self._entry])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give back what this pool added (idempotent; a no-op in a forked child)."""
        if self._owner_pid is None or self._owner_pid != os.getpid():
            return
        with signals_deferred(), _pool_lock():
            if self._added:
                now = counts(self.size_kb).persistent
                _write_pool_size(nr_hugepages_path(self.size_kb), max(now - self._added, 0))
            if self._entry is not None:
                _write_ledger([e for e in _read_ledger() if e != self._entry])
                self._entry = None
            self._added = 0
            self._owner_pid = None
