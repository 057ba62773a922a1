"""The registry of a matrix run's child processes: a stop request ends every child (SIGTERM,
then SIGKILL), refuses new ones, and a child the stop killed is no failure of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from uffdharness.matrix.children import Children, Stopped


def test_stop_terminates_children_and_refuses_new_ones():
    children = Children()
    with children.started(["sleep", "30"]) as proc:
        assert children.live_pids == [proc.pid]
        assert os.getpgid(proc.pid) == proc.pid  # a group of its own: no terminal Ctrl-C
        children.stop(signal.SIGTERM)
        assert proc.wait(timeout=5) == -signal.SIGTERM
    assert children.live_pids == []
    with pytest.raises(Stopped, match="interrupted by SIGTERM"):
        children.run(["true"])
    children.reset()
    assert children.run(["true"]).returncode == 0


def test_a_child_that_ignores_sigterm_is_killed_by_escalation_or_a_second_stop():
    ignore_term = ["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"]
    for second_request in (False, True):
        children = Children()
        with children.started(ignore_term) as proc:
            time.sleep(0.2)  # let the trap be set
            children.stop(signal.SIGTERM)
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
            if second_request:
                children.stop(signal.SIGINT)
            else:
                children._stopped_at -= 60  # as if the grace had passed
                children.escalate()
            assert proc.wait(timeout=5) == -signal.SIGKILL
        assert children.stop_signal == signal.SIGTERM  # the first request is what counts


def test_a_child_still_running_when_its_block_raises_is_killed_and_reaped():
    children = Children()
    with pytest.raises(RuntimeError), children.started(["sleep", "30"]) as proc:
        raise RuntimeError("the caller failed")
    assert proc.returncode == -signal.SIGKILL and children.live_pids == []


def test_a_child_the_stop_killed_raises_stopped_not_a_failure_of_its_own():
    children = Children()
    stopper = threading.Timer(0.3, children.stop, (signal.SIGHUP,))
    stopper.start()
    try:
        with pytest.raises(Stopped, match="SIGHUP"):
            children.run(["sleep", "30"], check=True)  # not CalledProcessError
    finally:
        stopper.join()
    assert children.live_pids == []
