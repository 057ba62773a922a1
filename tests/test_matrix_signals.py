"""A signal to `uffdharness matrix` stops it cleanly: every qemu (and host run) it started is
killed, its temporary directories are gone, the table and reports show what finished, and
the exit status is 128 + the signal's number.

The real CLI runs in a child process, tagged through its environment so that anything it
left behind can be found in /proc even after it was re-parented to init.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import junitparser
import pytest
from test_matrix_cli import _cached_spec

TAG = "UFFDHARNESS_SIGNAL_TEST_TAG"
GUEST_DIRS = "uffdharness-guest-*"
TEMP_DIRS = (GUEST_DIRS, "uffdharness-host-*")  # a guest's results share, a host run's


def _children_of(pid: int) -> dict[int, str]:
    """pid -> comm of the processes whose parent is ``pid``."""
    found = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            found[int(stat.split("/")[2])] = comm
    return found


def _tagged(tag: str) -> list[str]:
    """Every live process whose environment carries ``tag``, as "pid cmdline"."""
    left = []
    for environ in glob.glob("/proc/[0-9]*/environ"):
        try:
            if f"{TAG}={tag}".encode() not in Path(environ).read_bytes().split(b"\0"):
                continue
            pid = environ.split("/")[2]
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if state != "Z":
            left.append(f"{pid} {cmdline.decode(errors='replace')[:120]}")
    return left


def _temp_dirs(root: Path) -> set[str]:
    return {path for pattern in TEMP_DIRS for path in glob.glob(str(root / pattern))}


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class MatrixChild:
    """`python -m uffdharness matrix ARGS --json --junit` in a tagged child process, its
    temporary directories in a TMPDIR of its own (so guests other processes run meanwhile
    are not counted as its leftovers)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.tag = uuid.uuid4().hex
        self.json = tmp_path / "m.json"
        self.junit = tmp_path / "m.xml"
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uffdharness", "matrix", *args]
            + ["--json", str(self.json), "--junit", str(self.junit)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, **{TAG: self.tag, "TMPDIR": str(self.tmpdir)}),
        )

    def guest_dirs(self) -> set[str]:
        return set(glob.glob(str(self.tmpdir / GUEST_DIRS)))

    def temp_dirs(self) -> set[str]:
        return _temp_dirs(self.tmpdir)

    def wait_for_child(self, comm_prefix: str, argument: str = "") -> int:
        """A child whose comm starts with ``comm_prefix`` and whose argv holds ``argument``."""

        def started() -> int | None:
            assert self.proc.poll() is None, self.proc.communicate()
            for pid, comm in _children_of(self.proc.pid).items():
                if comm.startswith(comm_prefix) and argument in _argv(pid):
                    return pid
            return None

        return _wait_for(started, 60, f"a {comm_prefix} child of the matrix")

    def wait_for_guest(self) -> int:
        """The booting qemu (not `qemu-system-x86_64 --version`, which asks its version)."""
        return self.wait_for_child("qemu-system", "-kernel")

    def stop(self, signum: int) -> tuple[int, str, str]:
        self.proc.send_signal(signum)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err

    def leftovers(self) -> tuple[list[str], set[str]]:
        """(processes it started that still live, guest temp dirs it left)."""
        deadline = time.monotonic() + 5  # init reaps the re-parented a moment later
        while (left := _tagged(self.tag)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left, self.temp_dirs()

    def end(self) -> None:
        """After a failed test: SIGTERM, the way that leaves nothing behind; then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


@pytest.fixture
def matrix_child(tmp_path):
    started: list[MatrixChild] = []

    def start(*args: str) -> MatrixChild:
        started.append(MatrixChild(tmp_path, *args))
        return started[-1]

    yield start
    for child in started:
        child.end()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_kills_the_guest_removes_its_share_and_prints_the_table(matrix_child, signum):
    spec = _cached_spec("6.1")
    child = matrix_child("--kernel", spec, "-k", "unregister-merge", "--memory", "anon")
    qemu = child.wait_for_guest()
    _wait_for(child.guest_dirs, 10, "the share")
    rc, out, err = child.stop(signum)
    left, dirs = child.leftovers()
    assert left == [] and not Path(f"/proc/{qemu}/cmdline").exists()
    assert dirs == set()
    assert rc == 128 + signum, err
    name = signal.Signals(signum).name
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.splitlines()[-1] == (
        f"uffdharness matrix: interrupted by {name}: 0 of 1 kernels finished; not finished: {spec}"
    )
    assert out.splitlines()[2].split() == ["(guest", "run)", "interrupted"]
    assert f"{spec}: (guest run) error: interrupted by {name} after" in out
    document = json.loads(child.json.read_text())
    assert document["matrix"]["interrupted"] == name
    (section,) = document["kernels"]
    assert section["guest"]["status"] == "interrupted" and section["guest"]["signal"] == name
    (suite,) = junitparser.JUnitXml.fromfile(str(child.junit))
    assert suite.name == spec and suite.errors == 1


@pytest.mark.timeout(120)
def test_with_two_jobs_the_finished_kernel_keeps_its_results(matrix_child):
    spec = _cached_spec("6.1")
    # the whole catalogue: seconds on the host, half a minute in a TCG guest
    child = matrix_child("--kernel", spec, "--kernel", "host", "--jobs", "2")
    qemu = child.wait_for_guest()

    def host_run_over() -> bool:
        children = _children_of(child.proc.pid)
        assert qemu in children, "the guest finished before the host run: nothing to interrupt"
        return list(children) == [qemu]

    _wait_for(host_run_over, 60, "the host run to end")
    rc, out, err = child.stop(signal.SIGTERM)
    left, dirs = child.leftovers()
    assert (left, dirs, rc) == ([], set(), 128 + signal.SIGTERM), err
    assert out.splitlines()[0].split() == [spec, "host"]
    guest_row = next(line for line in out.splitlines() if line.startswith("(guest run)"))
    assert guest_row.split() == ["(guest", "run)", "interrupted", "-"]
    assert err.splitlines()[-1].endswith(f"1 of 2 kernels finished; not finished: {spec}")
    guest, host = json.loads(child.json.read_text())["kernels"]
    assert [r["id"] for r in guest["results"]] == ["guest"]
    assert guest["guest"]["status"] == "interrupted"
    assert host["guest"]["status"] == "ok" and len(host["results"]) > 10
    assert "guest" not in [r["id"] for r in host["results"]]


@pytest.mark.timeout(120)
def test_a_signal_during_a_host_run_ends_that_run_and_its_scenarios(matrix_child):
    # no qemu needed: the host kernel's `uffdharness run` is a child like any other
    child = matrix_child("--kernel", "host")
    run = child.wait_for_child("python")
    _wait_for(lambda: _children_of(run), 30, "a scenario process")  # mid-catalogue
    assert child.temp_dirs()  # the run's results directory, meanwhile
    rc, out, err = child.stop(signal.SIGTERM)
    left, dirs = child.leftovers()
    assert (left, dirs, rc) == ([], set(), 128 + signal.SIGTERM), err
    assert "Traceback" not in err
    assert "host: (guest run) error: interrupted by SIGTERM" in out
