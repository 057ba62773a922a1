"""A kernel that misbehaves must give a ``fail`` with facts, never a crashed scenario.

The kernel is simulated, not mocked: every UFFDIO_WRITEPROTECT that clears protection is
issued with UFFDIO_WRITEPROTECT_MODE_DONTWAKE, so the real kernel unprotects the page but
leaves the writer asleep in handle_userfault(), exactly as a kernel would whose unprotect
path lost its wake_up (a one-line change in mm/userfaultfd.c).
"""

from __future__ import annotations

import os
import time

import pytest

from uffdharness import system
from uffdharness.abi import RegisterMode, WriteProtectMode
from uffdharness.isolation import run_in_child
from uffdharness.memory import MemoryKind
from uffdharness.runner import run
from uffdharness.scenarios import CATALOGUE
from uffdharness.scenarios.context import Background, Context
from uffdharness.uffd import Userfaultfd

pytestmark = pytest.mark.timeout(300)

UNWOKEN_WRITER_SCENARIOS = ("wp-basic", "wp-shmem-survives-zap")


@pytest.fixture
def unprotect_never_wakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inherited by the forked scenario: an unprotect leaves the faulting writer blocked."""
    writeprotect = Userfaultfd.writeprotect

    def without_wake(self, target, length=None, mode=WriteProtectMode.WP):
        if not mode & WriteProtectMode.WP:
            mode |= WriteProtectMode.DONTWAKE
        return writeprotect(self, target, length, mode)

    monkeypatch.setattr(Userfaultfd, "writeprotect", without_wake)


@pytest.mark.usefixtures("unprotect_never_wakes")
@pytest.mark.parametrize(
    ("scenario_id", "kind"),
    [(sid, kind) for sid in UNWOKEN_WRITER_SCENARIOS for kind in CATALOGUE[sid].memory],
)
def test_writer_never_woken_is_a_fail_with_facts(scenario_id: str, kind: str) -> None:
    [result] = run([(CATALOGUE[scenario_id], kind)], timeout=20.0, info=system.facts())
    if result.verdict == "skip":
        pytest.skip(result.reason)
    assert result.verdict == "fail", f"{result.verdict}: {result.reason}"
    assert result.facts, "a fail must carry the facts observed"
    assert "woken" in result.reason or "finished" in result.reason, result.reason


def _close_under_an_unwoken_writer() -> str:
    """A writer blocked on a WP fault its unprotect never woke; then Context.close().

    The writer runs at SCHED_IDLE on the same CPU as this thread, so once the close of
    the uffd wakes it, it gets the CPU only when this thread sleeps: if close() unmapped
    the region before waiting for it, its retried write would hit unmapped memory.
    """
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    ctx = Context(MemoryKind.ANON, system.facts(), RegisterMode.WP)
    region = ctx.region(1)
    region.fill(b"x")
    uffd = ctx.uffd(ctx.mode_features(RegisterMode.WP))
    uffd.register(region, mode=RegisterMode.WP)
    uffd.writeprotect(region)
    writer = Background(region.write, b"written after the wake", 0)
    os.sched_setscheduler(writer._thread.native_id, os.SCHED_IDLE, os.sched_param(0))
    if writer.finished(0.2):
        return f"the write did not block: {writer.error!r}"
    uffd.writeprotect(region, mode=WriteProtectMode.DONTWAKE)  # unprotected, still asleep
    if writer.finished(0.2):
        return "DONTWAKE woke the writer"
    ctx.close()
    return "closed" if writer.finished(0) and writer.error is None else "writer still blocked"


def test_context_close_lets_a_woken_writer_finish_before_unmapping() -> None:
    for _attempt in range(5):
        outcome = run_in_child(_close_under_an_unwoken_writer, timeout=30)
        assert outcome.status == "ok", outcome
        assert outcome.value == "closed"


def test_context_close_leaves_memory_mapped_under_a_thread_that_stays_blocked() -> None:
    """A writer blocked on a uffd the scenario does not own (here: a duplicate fd keeps the
    uffd context alive) is never woken by close(): its region stays mapped, close returns."""

    def child() -> str:
        ctx = Context(MemoryKind.ANON, system.facts(), RegisterMode.MISSING)
        region = ctx.region(1)
        uffd = ctx.uffd()
        uffd.register(region)
        keeps_context = os.dup(uffd.fileno())
        writer = Background(region.write, b"never", 0)
        assert not writer.finished(0.2)
        started = time.monotonic()
        ctx.close()
        waited = time.monotonic() - started
        mapped = not region.closed
        os.close(keeps_context)  # now the release wakes it; it writes into the mapping
        return f"waited={waited:.0f} mapped={mapped} finished={writer.finished(5)}"

    outcome = run_in_child(child, timeout=30)
    assert outcome.status == "ok", outcome
    assert outcome.value == "waited=5 mapped=True finished=True"
