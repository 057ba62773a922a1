"""Progress output of `uffdharness matrix`: never a copy of the table. A pipe or log gets
one line when a kernel starts and one when it ends (with timing, no verdicts); a terminal
gets one live line rewritten in place and erased before the table."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys

import pytest
from test_cli_info import run_cli

from uffdharness.matrix.progress import ProgressPrinter
from uffdharness.matrix.runner import Milestone
from uffdharness.scenarios.model import VERDICTS


@pytest.mark.timeout(120)
def test_progress_on_a_pipe_is_milestones_not_a_copy_of_the_table():
    done = run_cli("matrix", "--kernel", "host", "-k", "unregister-merge")
    assert done.returncode == 0, done.stdout + done.stderr
    release = os.uname().release
    lines = done.stderr.splitlines()
    assert lines[0] == f"matrix: host: running on the host kernel {release}"
    assert re.fullmatch(r"matrix: host: finished in \d+\.\d s \(on the host\)", lines[1])
    assert len(lines) == 2
    # the verdicts and counts are the table's; the old last line was "... (2 pass)"
    for verdict in VERDICTS:
        assert verdict not in done.stderr
    assert "unregister-merge" in done.stdout and "unregister-merge" not in done.stderr


@pytest.mark.timeout(120)
def test_progress_on_a_terminal_is_one_live_line_erased_before_the_table():
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uffdharness", "matrix", "--kernel", "host"]
            + ["-k", "unregister-merge"],
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
        )
        os.close(secondary)
        secondary = -1
        out, _ = proc.communicate(timeout=100)
        terminal = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert proc.returncode == 0, out
    text = terminal.decode()
    assert "\n" not in text.replace("\r\n", "\n").rstrip("\n")  # only rewritten, never scrolled
    draws = [part for part in text.split("\r\x1b[K") if part]
    assert draws, text
    assert all(part.startswith("matrix ") for part in draws)
    assert any("host running" in part for part in draws) or any("host done" in p for p in draws)
    assert text.endswith("\r\x1b[K")  # erased: the table starts on a clean line
    assert out.splitlines()[0].split() == ["host"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_live_line_shows_each_kernels_stage_and_its_time():
    stream, clock = io.StringIO(), FakeClock()
    printer = ProgressPrinter(stream, ["debian:5.10", "debian:6.1", "host"], clock, True)
    try:
        clock.now += 2
        printer(Milestone("debian:5.10", "booting", "booting 5.10.0-46-amd64 in qemu"))
        clock.now += 5
        printer(Milestone("host", "host", "running on the host kernel 6.18"))
        printer(Milestone("host", "done", "finished in 0.2 s (on the host)"))
        assert printer.live_line() == (
            "matrix 7 s: debian:5.10 booting 5 s | debian:6.1 waiting | host done"
        )
        printer(Milestone("debian:6.1", "note", "downloading linux-image-6.1.0-57-amd64"))
        printer(Milestone("debian:6.1", "done", "interrupted after 7.0 s"))
        printer(Milestone("debian:5.10", "done", "guest hang after 7.0 s (the reason ...)"))
        assert printer.live_line().endswith(
            "debian:5.10 failed | debian:6.1 interrupted | host done"
        )
    finally:
        printer.close()
    written = stream.getvalue()
    # a note is a line of its own between two drawings of the live line
    assert "\r\x1b[Kmatrix: debian:6.1: downloading linux-image-6.1.0-57-amd64\n" in written
    assert written.count("\n") == 1 and written.endswith("\r\x1b[K")


def test_milestones_on_a_pipe_skip_the_instant_prepare_step():
    stream = io.StringIO()
    printer = ProgressPrinter(stream, ["debian:6.1"], FakeClock(), False)
    printer(Milestone("debian:6.1", "preparing", "preparing the kernel"))
    printer(Milestone("debian:6.1", "note", "downloading linux-image-6.1.0-57-amd64"))
    printer(Milestone("debian:6.1", "booting", "booting 6.1.0-57-amd64 in qemu (tcg)"))
    printer(Milestone("debian:6.1", "done", "finished in 6.6 s (boot 3.0 s, tcg)"))
    printer.close()
    assert stream.getvalue().splitlines() == [
        "matrix: debian:6.1: downloading linux-image-6.1.0-57-amd64",
        "matrix: debian:6.1: booting 6.1.0-57-amd64 in qemu (tcg)",
        "matrix: debian:6.1: finished in 6.6 s (boot 3.0 s, tcg)",
    ]
    assert "\r" not in stream.getvalue()
