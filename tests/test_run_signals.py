"""Signals to a real ``uffdharness run``: SIGTERM, SIGHUP and Ctrl-C unwind everything.

Each test starts the real command line in a subprocess, waits until a scenario child
exists (so the hugepage pool is reserved and a child must be killed), signals it, and then
checks what is left behind: processes, the hugepage pool, the partial report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from uffdharness import hugepages

pytestmark = pytest.mark.timeout(120)

WAIT_S = 30.0


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(predicate, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def start(argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def finish(process: subprocess.Popen, timeout: float = WAIT_S) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in children_of(process.pid):
            os.killpg(child, signal.SIGKILL)
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"still running {timeout} s after the signal:\n{err}") from None
    return process.returncode, out, err


def pool_size() -> int:
    return hugepages.counts(hugepages.default_size_kb() or 2048).persistent


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)]
)
def test_signal_during_run_restores_pool_and_writes_partial_report(
    tmp_path: Path, signum: int, exit_code: int
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the run reserves hugepages, the leak under test")
    before = pool_size()
    report = tmp_path / "partial.json"
    # Every hugetlb pair: the pool is reserved before the first child is forked.
    run = start(
        [sys.executable, "-m", "uffdharness", "run", "--memory", "hugetlb", "--json", str(report)]
    )
    scenario_child = wait_for(lambda: children_of(run.pid), "a scenario child")[0]
    reserved = pool_size()
    run.send_signal(signum)
    code, out, err = finish(run)

    assert code == exit_code, err
    assert reserved > before, "the run had not reserved its pool when signalled"
    assert pool_size() == before, "hugepage pool leaked"
    assert not alive(scenario_child), "scenario child outlived the run"
    assert "Traceback" not in err, err
    assert f"interrupted by {signal.Signals(signum).name}" in err
    summary = json.loads(report.read_text())["summary"]
    assert summary["interrupted"]["signal"] == signal.Signals(signum).name
    assert summary["interrupted"]["done"] == summary["total"]
    assert summary["interrupted"]["total"] > summary["total"]
    assert f"{summary['total']} results in" in out


STUCK_RUN = textwrap.dedent(
    """
    import sys
    from uffdharness.cli import main
    from uffdharness.scenarios.registry import scenario

    @scenario(id="stuck-in-fault", title="stuck", checks="nothing", memory=("anon",))
    def stuck(ctx):
        region = ctx.region(1)
        uffd = ctx.uffd()
        uffd.register(region)
        region.touch(0)  # nobody resolves the fault: blocked in handle_userfault()

    sys.exit(main(["run", "-k", "stuck-in-fault", "--timeout", "600"]))
    """
)


def test_ctrl_c_twice_with_a_child_stuck_in_a_fault_leaves_nothing(tmp_path: Path) -> None:
    run = start([sys.executable, "-c", STUCK_RUN], start_new_session=True)
    child = wait_for(lambda: children_of(run.pid), "the scenario child")[0]
    wait_for(
        lambda: Path(f"/proc/{child}/wchan").read_text() == "handle_userfault",
        "the child to block in handle_userfault",
    )
    # A terminal's Ctrl-C goes to the parent's process group, not to the child's own.
    os.killpg(run.pid, signal.SIGINT)
    os.killpg(run.pid, signal.SIGINT)
    started = time.monotonic()
    code, out, err = finish(run, timeout=20)

    assert time.monotonic() - started < 20
    assert code == 130, err
    assert not alive(child), "the stuck child was orphaned"
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "uffdharness run: interrupted by SIGINT during stuck-in-fault[anon] after 0 of 1 "
        "scenario x memory pairs"
    )
    assert "0 results in" in out


def test_interrupted_command_without_a_report_prints_one_line() -> None:
    """Commands that have nothing partial to report still exit 128 + signal, one line."""
    run = start(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from uffdharness.cli import info, main\n"
            "def sleeper(args):\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n"
            "info.run = sleeper\n"
            "sys.exit(main(['info']))\n",
        ]
    )
    assert run.stdout is not None
    assert run.stdout.readline().strip() == "ready"
    run.send_signal(signal.SIGTERM)
    code, _, err = finish(run)
    assert code == 143
    assert err == "uffdharness info: interrupted by SIGTERM\n"
