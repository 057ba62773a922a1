"""`git bisect run uffdharness bisect-step`, for real: ci/bisect-proof makes a git history
of Debian's 6.1 source (commit 1), the backported merge fix (commit 2), a Documentation/
edit and a comment in mm/mmap.c, checks both ends by hand, and bisects with --find-fix.
git must name commit 2 as the first fixed commit, every step must give a verdict (never
125), and every build after the first must be incremental (one build directory for
every commit of the tree).

The test runs the script rather than repeating it: what users and CI run is what is
tested. Opt-in (UFFDHARNESS_KBUILD=1): the first run builds a kernel cold (about 5-10
minutes on 2 cores) after fetching ~140 MB; the repository and the kernels of its commits
are kept in the kernel cache, so a second run boots cached kernels only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from uffdharness.matrix import hosttools

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "ci" / "bisect-proof"
# "step 41.2 s (git 1a2b...): built in 22.4 s (3 files compiled), guest 18.1 s"
STEP = re.compile(
    r"^uffdharness bisect-step: step (?P<step_s>[\d.]+) s \(git (?P<commit>[0-9a-f]+)\): "
    r"(?:built in (?P<build_s>[\d.]+) s \((?P<files>\d+) files compiled\)|kernel from the cache)",
    re.M,
)
VERDICT = re.compile(
    r"^bisect-step: (?P<detail>.*) -> (?P<status>\d+) \((?P<meaning>[^)]*)\)$", re.M
)
INCREMENTAL_FILES = 50  # a later commit changes a file or two; a cold build compiles ~1,300

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("UFFDHARNESS_KBUILD") != "1",
        reason="builds and boots kernels (~15 minutes on 2 cores); set UFFDHARNESS_KBUILD=1",
    ),
    pytest.mark.timeout(5400),
]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_git_bisect_run_names_the_fix_commit():
    problems = hosttools.check(hosttools.BOOT_TOOLS + hosttools.BUILD_TOOLS)
    if problems:
        pytest.fail(str(hosttools.MissingHostTools(problems)))
    uffdharness = Path(sys.executable).parent / "uffdharness"
    proc = subprocess.run(
        [str(SCRIPT), str(uffdharness)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=5300,
        check=False,
    )
    output = proc.stdout
    print(output)  # the timings, for -s
    assert proc.returncode == 0, output[-6000:]
    repo = Path(re.search(r"^bisect-proof: (?:reusing|making) ([^\s:]+)", output, re.M).group(1))
    fix = _git(repo, "rev-parse", "main~2")
    assert f"{fix} is the first fixed commit" in output
    assert _git(repo, "status", "--porcelain") == ""  # no build wrote into the tree

    verdicts = [match.groupdict() for match in VERDICT.finditer(output)]
    broken_end, fixed_end, *bisect_steps = verdicts
    assert broken_end["status"] == "1" and broken_end["meaning"] == "shows the bug"
    assert broken_end["detail"] == (
        "unregister-merge[anon] known-bug: vmas_after_unregister=3 (expected 2)"
    )
    assert fixed_end["status"] == "0" and fixed_end["meaning"] == "behaves fixed"
    assert (
        fixed_end["detail"] == "unregister-merge[anon] pass: vmas_after_unregister=2 (expected 2)"
    )
    assert bisect_steps, "git bisect run tested no commit"
    for step in bisect_steps:  # --find-fix: 0 shows the bug, 1 behaves fixed; never a skip
        assert (step["status"], step["meaning"]) in {("0", "shows the bug"), ("1", "behaves fixed")}

    steps = [match.groupdict() for match in STEP.finditer(output)]
    assert len(steps) == len(verdicts), steps
    for step in steps[1:]:  # the first may be the cold build; every later one is incremental
        assert step["files"] is None or int(step["files"]) < INCREMENTAL_FILES, step
