"""The processes a matrix run starts, so that stopping the run ends every one of them.

qemu, apt-get, dpkg-deb, depmod and the host's ``uffdharness run`` all start through
``CHILDREN.started()`` or ``CHILDREN.run()``. Each gets a process group of its own, so a
Ctrl-C at the terminal reaches the matrix alone, which stops its children itself and can
still report what finished.

``stop()`` (the CLI calls it from its signal handler) sends every live child SIGTERM, and
SIGKILL at a second stop request or when the waiting run calls ``escalate()`` STOP_GRACE_S
later; from then on nothing new starts (``Stopped``). stop() takes no lock but its own
re-entrant one and starts no thread, so a signal handler may call it. Children are signalled
through a pidfd (pidfd_open(2), Linux 5.3), so a signal never reaches an unrelated process
that reuses the pid of a child already reaped.

One registry per process: signals are delivered to the process, not to a run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..interrupts import signal_name

STOP_GRACE_S = 3.0

__all__ = ["CHILDREN", "STOP_GRACE_S", "Children", "Stopped"]


class Stopped(Exception):
    """The run was asked to stop: raised instead of starting more work."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal_name(signum)}")


@dataclass
class _Child:
    proc: subprocess.Popen
    pidfd: int


class Children:
    def __init__(self) -> None:
        # re-entrant: stop() runs in a signal handler, which may interrupt the main thread
        # inside started() or inside stop() itself
        self._lock = threading.RLock()
        self._live: dict[int, _Child] = {}
        self.stop_signal: int | None = None
        self._stopped_at = 0.0

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None

    def check(self) -> None:
        """Raise Stopped once a stop was requested."""
        if self.stop_signal is not None:
            raise Stopped(self.stop_signal)

    @property
    def live_pids(self) -> list[int]:
        with self._lock:
            return sorted(self._live)

    @contextlib.contextmanager
    def started(self, argv: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen]:
        """``subprocess.Popen(argv, **popen)``, registered until the block ends; a child
        still running then (the block raised) is killed and reaped."""
        with self._lock:
            self.check()
            proc = subprocess.Popen(list(argv), start_new_session=True, **popen)
            child = _Child(proc, os.pidfd_open(proc.pid))
            self._live[proc.pid] = child
            if self.stop_signal is not None:  # requested while Popen ran in this thread
                _send(child, signal.SIGTERM)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                _send(child, signal.SIGKILL)
                proc.wait()
            with self._lock:
                del self._live[proc.pid]
                os.close(child.pidfd)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = False,
        input: bytes | None = None,
        text: bool = True,
        cwd: Any = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """``subprocess.run(argv, capture_output=True, ...)`` for a registered child.

        Stopped when the run was asked to stop and the child did not succeed, so a caller
        never mistakes a child killed by the stop for a failure of its own.
        """
        stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
        with self.started(
            argv,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=text,
            cwd=cwd,
            env=env,
        ) as proc:
            try:
                out, err = proc.communicate(input, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                raise subprocess.TimeoutExpired(list(argv), timeout or 0, out, err) from None
        if proc.returncode != 0:
            self.check()
            if check:
                raise subprocess.CalledProcessError(proc.returncode, list(argv), out, err)
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def stop(self, signum: int) -> None:
        """Stop the run: SIGTERM to every child, or SIGKILL on a second request."""
        with self._lock:
            first = self.stop_signal is None
            if first:
                self.stop_signal, self._stopped_at = signum, time.monotonic()
            for child in list(self._live.values()):
                _send(child, signal.SIGTERM if first else signal.SIGKILL)

    def escalate(self) -> None:
        """SIGKILL the children still alive STOP_GRACE_S after a stop request."""
        if self.stop_signal is None or time.monotonic() - self._stopped_at < STOP_GRACE_S:
            return
        with self._lock:
            for child in list(self._live.values()):
                _send(child, signal.SIGKILL)

    def reset(self) -> None:
        """Forget a stop request (for the next run in this process); children must be gone."""
        with self._lock:
            if self._live:
                raise RuntimeError(f"children still running: {sorted(self._live)}")
            self.stop_signal = None


def _send(child: _Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited and reaped already
        signal.pidfd_send_signal(child.pidfd, signum)


CHILDREN = Children()
