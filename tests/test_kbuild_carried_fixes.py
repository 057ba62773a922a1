"""A patched kernel carries fixes its version does not: the runner's judgment and the
matrix's version-keyed expectations treat a declared fix as present, and the report says
which kernels were built here."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from uffdharness.kernelversion import KernelVersion
from uffdharness.matrix import report
from uffdharness.matrix.expectations import check
from uffdharness.matrix.runner import KernelRun, MatrixOptions, run_argv
from uffdharness.runner import Result, judge
from uffdharness.scenarios import CATALOGUE
from uffdharness.scenarios.model import Observation
from uffdharness.scenarios.vma_merge import UFFD_MERGE_FIX

FIX = UFFD_MERGE_FIX.fix
V61 = KernelVersion(6, 1, 192)
BUGGY = Observation({"vmas_after_unregister": 3}, False, "vmas_after_unregister=3", "3 != 2")


def merge_row(memory: str, verdict: str, vmas: int) -> Result:
    facts = {"vmas_after_unregister": vmas}
    return Result("unregister-merge", memory, verdict, "", f"vmas_after_unregister={vmas}", facts)


def test_the_bug_on_a_kernel_declaring_its_fix_is_a_failure_not_a_known_bug():
    item = CATALOGUE["unregister-merge"]
    assert judge(item, V61, BUGGY, "anon")[0] == "known-bug"
    verdict, reason = judge(item, V61, BUGGY, "anon", carried_fixes={FIX})
    assert verdict == "fail"
    assert f"'{FIX}' on 6.1.192, which declares it carries that fix" in reason
    assert judge(item, V61, BUGGY, "anon", carried_fixes={"some other fix"})[0] == "known-bug"
    assert UFFD_MERGE_FIX.fixed_on(V61, {FIX}) and not UFFD_MERGE_FIX.fixed_on(V61)


def test_expectations_of_a_patched_6_1_are_those_of_a_fixed_kernel():
    fixed = [merge_row(kind, "pass", 2) for kind in ("anon", "shmem", "memfd")]
    fixed.append(merge_row("hugetlb", "pass", 3))
    # unpatched, 6.1 must show the bug: the fixed results are 3 violations
    assert len(check(V61, fixed)[1]) == 3
    assert check(V61, fixed, carried_fixes=[FIX]) == (4, [])
    registered = [
        Result("register-merge", kind, "pass", "", "", {"vmas_after_second_register": 2})
        for kind in ("anon", "shmem", "memfd")
    ]
    assert len(check(V61, registered)[1]) == 3
    assert check(V61, registered, carried_fixes=[FIX]) == (3, [])
    # and a patched kernel still showing the bug breaks the fixed kernels' expectation
    buggy = [merge_row("anon", "known-bug", 3)]
    _, (violation,) = check(V61, buggy, carried_fixes=[FIX])
    assert violation.expected == "pass, vmas_after_unregister=2"
    assert f"kernel >= 6.4 or a kernel carrying '{FIX}'" in violation.why


def test_the_guest_is_told_the_fixes_and_the_report_names_self_built_kernels():
    argv = run_argv(MatrixOptions(pattern="unregister-merge"), "/usr/bin/python3", (FIX,))
    assert argv[argv.index("--carries-fix") + 1] == FIX
    assert "--carries-fix" not in run_argv(MatrixOptions(), "/usr/bin/python3")
    run = KernelRun(
        "debian-src:6.1,patch=fix.patch",
        "6.1.192",
        kernel={"release": "6.1.192", "version": [6, 1, 192], "carried_fixes": [FIX]},
        results=[merge_row("anon", "pass", 2)],
        guest={"status": "ok", "accel": "tcg", "boot_s": 3.0, "total_s": 9.0},
        build={
            "source": "linux-source-6.1 6.1.192-3",
            "patches": ["/repo/patches/fix.patch"],
            "carries_fixes": [FIX],
        },
    )
    run.check_expectations()
    assert run.violations == [] and run.checked == 1
    out = io.StringIO()
    report.print_table([run], out)
    assert (
        f"self-built from linux-source-6.1 6.1.192-3 + fix.patch; carries '{FIX}'" in out.getvalue()
    )
    again = report.runs_from_json(report.to_json([run]))[0]
    assert again.build == run.build
    again.check_expectations()
    assert again.violations == []


def test_run_reports_the_fixes_it_was_told_in_its_json(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "uffdharness",
            "run",
            "--quiet",
            "-k",
            "api-probe",
            "--carries-fix",
            FIX,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    kernel = json.loads(out.read_text())["kernel"]
    assert kernel["carried_fixes"] == [FIX]
