"""SIGINT, SIGTERM and SIGHUP as one exception, so every owner of a resource unwinds.

SIGTERM's and SIGHUP's default action ends the process without running a single ``finally``:
a hugepage reservation, a forked scenario or a qemu guest would outlive it. Inside
:func:`raising` each of the three raises :class:`Interrupted` in the main thread instead, and
the command reports what finished and exits 128 + the signal number, as a shell does.

Only the first signal raises. The ones after it arrive while that exception is unwinding
through cleanup code; raising again there could skip the rest of the cleanup, so they are
counted and otherwise ignored.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = [
    "STOPPING_SIGNALS",
    "Interrupted",
    "blocked",
    "calling",
    "raising",
    "restore_defaults",
    "signal_name",
]

STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by ``signum``; a KeyboardInterrupt for SIGINT's sake."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(self.signal_name)

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """Within the block, the first of SIGINT/SIGTERM/SIGHUP raises Interrupted; later ones
    are ignored. Handlers are put back afterwards. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        arrived.append(signum)
        if len(arrived) == 1:
            raise Interrupted(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def calling(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Within the block, each stopping signal calls ``on_signal(signum)`` and raises
    nothing: for a command whose worker threads wind down on a stop request (the matrix)
    rather than through an exception in the main thread. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, lambda signum, _frame: on_signal(signum))
        for signum in STOPPING_SIGNALS
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """Hold the stopping signals back for a short cleanup (kill and reap a child) so that a
    second Ctrl-C cannot cut it in half; they are delivered when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def restore_defaults() -> None:
    """In a freshly forked child: the stopping signals end it, as for any program."""
    for signum in STOPPING_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
