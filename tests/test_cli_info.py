"""``uffdharness info``: text and JSON output, in-process and as ``python -m``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import uffdharness
from uffdharness.cli import main

REPO_ROOT = Path(uffdharness.__file__).resolve().parent.parent
NOBODY = 65534


def run_main_in_child(argv: list[str], prepare: Callable[[], None]) -> tuple[int, str]:
    """Fork, call ``prepare()`` then ``main(argv)`` in the child; (exit code, stdout)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = io.StringIO()
        code = 99
        try:
            os.close(read_end)
            prepare()
            with contextlib.redirect_stdout(out):
                code = main(argv)
        except BaseException as error:  # noqa: BLE001 - a crash is what the test looks for
            out.write(f"\nCRASH {type(error).__name__}: {error}")
            code = 98
        os.write(write_end, out.getvalue().encode())
        os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["release"] == platform.release()
    assert data["kernel"]["release"] == platform.release()
    assert data["kernel"]["version"].startswith(f"{data['kernel']['major']}.")
    assert data["is_root"] == (os.geteuid() == 0)
    assert {"enabled", "shmem_enabled"} <= set(data["thp"])


def test_info_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    labels = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert {"kernel", "release", "machine", "userfaultfd", "/dev/userfaultfd"} <= set(labels)
    assert platform.release() in out
    # every value, and every wrapped continuation, starts in one column
    columns = set()
    for line in out.splitlines():
        label_then_value = re.match(r"^(\s*\S.*?)\s{2,}(\S)", line)
        columns.add(
            label_then_value.start(2) if label_then_value else len(line) - len(line.lstrip())
        )
    assert len(columns) == 1, out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "info" in capsys.readouterr().out


def test_python_dash_m() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *sys.path]))
    completed = subprocess.run(
        [sys.executable, "-m", "uffdharness", "info", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["kernel"]["release"] == platform.release()
    completed = subprocess.run(
        [sys.executable, "-m", "uffdharness", "info"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    assert platform.release() in completed.stdout


def test_info_without_uffd_module() -> None:
    def hide_uffd_module() -> None:
        sys.modules["uffdharness.uffd"] = None  # type: ignore[assignment]

    code, out = run_main_in_child(["info", "--json"], hide_uffd_module)
    assert code == 0, out
    status = json.loads(out)["uffd"]["status"]
    assert status.startswith("unavailable: "), status


def test_info_as_nobody() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid() to nobody")

    def drop_to_nobody() -> None:
        # Import while still root: nobody may not be able to read the checkout or the
        # venv at all (a clone under /root is mode 0700), and info imports lazily.
        import elftools.common.exceptions  # noqa: F401
        import elftools.elf.elffile  # noqa: F401

        import uffdharness.uffd

        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        # A probe cached by the parent while it was root must not answer for nobody.
        uffdharness.uffd._probe_cache = None

    code, out = run_main_in_child(["info"], drop_to_nobody)
    assert code == 0, out
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.startswith(("root", "C")))
    assert rows["root"] == "no"
    assert rows["CAP_SYS_PTRACE"] == "no"
    assert "agrees with uname" in out
    uffd_row = next(line for line in out.splitlines() if line.startswith("userfaultfd "))
    with open("/proc/sys/vm/unprivileged_userfaultfd") as sysctl:
        unprivileged = int(sysctl.read())
    dev_mode = os.stat("/dev/userfaultfd").st_mode if os.path.exists("/dev/userfaultfd") else 0
    if unprivileged == 0 and not dev_mode & 0o006:
        assert "unavailable: " in uffd_row, out
