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
from typing import Any

import pytest

import uffdharness
from uffdharness.cli import main
from uffdharness.isolation import run_in_child
from uffdharness.kernelversion import parse

REPO_ROOT = Path(uffdharness.__file__).resolve().parent.parent
NOBODY = 65534


def run_cli(*argv: str, timeout: float = 120, **options: Any) -> subprocess.CompletedProcess:
    """``python -m uffdharness ARGV`` in a child process (``options`` go to subprocess.run)."""
    return subprocess.run(
        [sys.executable, "-m", "uffdharness", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **options,
    )


def run_main_in_child(argv: list[str], prepare: Callable[[], None]) -> tuple[int, str]:
    """Fork, call ``prepare()`` then ``main(argv)`` in the child; (exit code, stdout)."""

    def prepared_main() -> tuple[int, str]:
        prepare()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            return main(argv), out.getvalue()

    outcome = run_in_child(prepared_main)
    if outcome.status != "ok":  # a crash is what the tests look for
        return 98, f"CRASH {outcome.status}: {outcome.exception}\n{outcome.traceback}"
    return outcome.value


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


def modules_after_building_the_parser() -> set[str]:
    """What a fresh interpreter has imported once ``build_parser()`` returns."""
    code = "import sys; from uffdharness import cli; cli.build_parser(); print(*sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


def test_building_the_parser_imports_no_command_code() -> None:
    # every start builds every parser, each guest's included: handlers import the rest
    heavy = {"uffdharness.benchmark", "uffdharness.runner", "uffdharness.scenarios"}
    heavy |= {"uffdharness.system", "uffdharness.reports", "uffdharness.handler"}
    assert heavy & modules_after_building_the_parser() == set()


def test_cli_default_timeout_is_the_runners() -> None:
    from uffdharness import runner
    from uffdharness.cli import run

    assert run.DEFAULT_TIMEOUT == runner.DEFAULT_TIMEOUT


def test_python_dash_m() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *sys.path]))
    completed = run_cli("info", "--json", timeout=30, env=env, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["kernel"]["release"] == platform.release()
    completed = run_cli("info", timeout=30, env=env, cwd=REPO_ROOT)
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
        uffdharness.uffd._probe_cache.clear()

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
        # Kernel-mode faults are refused, but a UFFD_USER_MODE_ONLY uffd (5.11) opens.
        assert "refused: EPERM: vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE" in out
        if parse(platform.release()) >= (5, 11):
            assert uffd_row.split(None, 1)[1] == "available", out
            assert re.search(r"opened via +syscall with UFFD_USER_MODE_ONLY", out), out
