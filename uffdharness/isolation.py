"""Run a function in a forked child under a timeout: a hang or a crash becomes a value.

A thread stuck in a userfaultfd fault cannot be interrupted from Python (the signal handler
only runs once the C call returns, and the fault retries), so the only reliable way to turn
a hang into a verdict is a separate process that can be killed.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import select
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from . import interrupts

Status = Literal["ok", "raised", "crashed", "timeout"]


@dataclass(frozen=True)
class ChildOutcome:
    status: Status
    value: Any = None
    exception: BaseException | None = None
    traceback: str = ""
    signal: int | None = None
    exit_code: int | None = None
    duration_s: float = 0.0

    def unwrap(self) -> Any:
        """The value, or an exception describing why there is none."""
        if self.status == "ok":
            return self.value
        if self.status == "raised" and self.exception is not None:
            raise self.exception
        raise ChildFailed(self)


class ChildFailed(RuntimeError):
    def __init__(self, outcome: ChildOutcome):
        self.outcome = outcome
        if outcome.status == "timeout":
            text = f"child did not finish within {outcome.duration_s:.1f} s (killed)"
        elif outcome.signal:
            text = f"child killed by {signal.Signals(outcome.signal).name}"
        else:
            text = f"child {outcome.status}, exit code {outcome.exit_code}"
        if outcome.traceback:
            text += "\n" + outcome.traceback
        super().__init__(text)


def _child_main(write_fd: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        payload = ("ok", fn(*args, **kwargs), "")
    except BaseException as exc:  # noqa: BLE001 - everything crosses back as a value
        payload = ("raised", exc, traceback.format_exc())
    try:
        data = pickle.dumps(payload)
    except Exception as exc:  # noqa: BLE001
        data = pickle.dumps(("raised", RuntimeError(f"unpicklable result: {exc!r}"), ""))
    view = memoryview(data)
    while view:
        written = os.write(write_fd, view)
        view = view[written:]
    os.close(write_fd)


def _become_child(
    read_fd: int, write_fd: int, fn: Callable[..., Any], args: tuple, kwargs: dict
) -> None:
    code = 0
    try:
        os.close(read_fd)
        os.setpgid(0, 0)
        interrupts.restore_defaults()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, interrupts.STOPPING_SIGNALS)
        # A crash is an expected outcome here, reported as a value: no stack dump.
        faulthandler.disable()
        _child_main(write_fd, fn, args, kwargs)
    except BaseException:  # noqa: BLE001
        code = 70
    finally:
        os._exit(code)


def run_in_child(
    fn: Callable[..., Any], *args: Any, timeout: float = 30.0, **kwargs: Any
) -> ChildOutcome:
    """fork(), call ``fn`` in the child, return its result, exception, crash or timeout.

    Whatever ends the wait (the result, the timeout, an exception such as Ctrl-C or
    :class:`~uffdharness.interrupts.Interrupted`), the child's process group is killed and
    the child reaped before this returns or raises: nothing outlives the call.
    """
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    chunks: list[bytes] = []
    deadline = started + timeout
    pid: int | None = None
    finished = timed_out = False
    try:
        with interrupts.blocked():  # a signal now is delivered inside the try that reaps
            pid = os.fork()
            if pid == 0:  # child
                _become_child(read_fd, write_fd, fn, args, kwargs)
            try:
                os.setpgid(pid, pid)  # also here: the group exists before the parent kills it
            except OSError:
                pass  # the child got there first, or already exited
            # Still blocked: a signal delivered right after close() returned would raise
            # before write_fd is forgotten, and the cleanup would close it twice (EBADF).
            os.close(write_fd)
            write_fd = -1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        finished = True
    finally:
        with interrupts.blocked():  # a second Ctrl-C must not leave the child behind
            for fd in (read_fd, write_fd):
                if fd >= 0:
                    os.close(fd)
            if pid is not None:
                if not finished or timed_out:
                    _kill_group(pid)
                _, status = os.waitpid(pid, 0)
                _kill_group(pid)  # grandchildren the scenario left behind
    duration = time.monotonic() - started
    if timed_out:
        return ChildOutcome("timeout", duration_s=duration)
    if os.WIFSIGNALED(status):
        return ChildOutcome("crashed", signal=os.WTERMSIG(status), duration_s=duration)
    exit_code = os.WEXITSTATUS(status)
    if not chunks:
        return ChildOutcome("crashed", exit_code=exit_code, duration_s=duration)
    kind, value, text = pickle.loads(b"".join(chunks))
    if kind == "ok":
        return ChildOutcome("ok", value=value, exit_code=exit_code, duration_s=duration)
    return ChildOutcome(
        "raised", exception=value, traceback=text, exit_code=exit_code, duration_s=duration
    )


def wait_or_kill(pid: int, timeout: float) -> int | None:
    """The wait status of child ``pid``, or None after SIGKILLing and reaping it when it
    outlived ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
