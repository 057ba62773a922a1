"""Matrix expectations, the kernel x scenario table, merged JSON, JUnit per kernel, and the
merge tool, on synthetic kernel runs (no qemu)."""

from __future__ import annotations

import io
import json

import junitparser
import pytest

from uffdharness.kernelversion import KernelVersion
from uffdharness.matrix import expectations, merge, report
from uffdharness.matrix.expectations import Expectation, check, reason_explained
from uffdharness.matrix.guest import GuestResult
from uffdharness.matrix.runner import (
    GUEST_ROW_ID,
    KernelRun,
    MatrixOptions,
    exit_status,
    failed_run,
    from_guest,
    run_argv,
)
from uffdharness.runner import Result
from uffdharness.scenarios import CATALOGUE
from uffdharness.scenarios.model import ALL_KINDS, Scenario


def version(text: str) -> KernelVersion:
    major, minor, patch = (int(n) for n in text.split("."))
    return KernelVersion(major, minor, patch)


def merge_row(memory: str, verdict: str, vmas: int) -> Result:
    return Result(
        "unregister-merge",
        memory,
        verdict,
        "",
        f"vmas_after_unregister={vmas}",
        {"vmas_after_unregister": vmas},
    )


def kernel_run(spec: str, release: str, results: list[Result], status: str = "ok") -> KernelRun:
    major, minor, patch = (int(n) for n in release.split("."))
    run = KernelRun(
        spec,
        f"{release}-amd64",
        f"{release}-1",
        kernel={
            "release": f"{release}-amd64",
            "version": [major, minor, patch],
            "patch_known": True,
            "features": [],
        },
        summary={"counts": {}, "total": len(results), "wall_s": 1.0},
        results=results,
        guest={
            "status": status,
            "exit_code": 0,
            "boot_s": 3.5,
            "total_s": 20.0,
            "accel": "tcg",
            "detail": "",
        },
    )
    run.check_expectations()
    return run


# --- expectations ------------------------------------------------------------------------


@pytest.mark.parametrize("release", ["5.10.262", "6.1.192"])
def test_unregister_merge_must_be_known_bug_with_three_vmas_before_6_4(release):
    good = [merge_row("anon", "known-bug", 3), merge_row("hugetlb", "pass", 3)]
    assert check(version(release), good) == (2, [])
    applied, violations = check(version(release), [merge_row("anon", "pass", 2)])
    assert applied == 1
    assert [(v.name, v.expected, v.observed) for v in violations] == [
        (
            "unregister-merge[anon]",
            "known-bug, vmas_after_unregister=3",
            "pass, vmas_after_unregister=2",
        )
    ]
    assert "6.4" in violations[0].why


@pytest.mark.parametrize("release", ["6.12.117", "6.18.44", "7.3.4"])
def test_unregister_merge_must_pass_with_two_vmas_from_6_12(release):
    assert check(version(release), [merge_row("memfd", "pass", 2)]) == (1, [])
    _, violations = check(version(release), [merge_row("memfd", "known-bug", 3)])
    assert [v.observed for v in violations] == ["known-bug, vmas_after_unregister=3"]
    # the right verdict with the wrong fact is a violation too
    _, violations = check(version(release), [merge_row("shmem", "pass", 3)])
    assert [v.observed for v in violations] == ["pass, vmas_after_unregister=3"]


@pytest.mark.parametrize("release", ["5.10.262", "6.1.192", "6.12.117"])
def test_hugetlb_never_merges_so_it_passes_everywhere(release):
    rows = [merge_row("hugetlb", "pass", 3), merge_row("hugetlb-private", "pass", 3)]
    assert check(version(release), rows) == (2, [])
    _, violations = check(version(release), [merge_row("hugetlb", "known-bug", 3)])
    assert len(violations) == 1


def test_newer_feature_scenarios_must_skip_with_a_reason_naming_it():
    old = version("6.1.192")
    skipped = Result(
        "wp-async-pagemap-scan", "anon", "skip", "needs kernel >= 6.7, running 6.1.192", "skipped"
    )
    assert check(old, [skipped])[1] == []
    ran = Result("wp-async-pagemap-scan", "anon", "fail", "scan returned EINVAL", "x")
    violations = check(old, [ran])[1]
    assert violations and all(v.expected == "skip" for v in violations)
    assert "scan returned EINVAL" in violations[0].observed
    vague = Result("wp-async-pagemap-scan", "anon", "skip", "did not feel like it", "skipped")
    assert "naming nothing newer" in check(old, [vague])[1][0].observed
    # on a kernel that has the feature, nothing is expected of it
    assert check(version("6.12.117"), [ran]) == (0, [])


def test_mode_feature_gates_cover_wp_on_shmem_before_5_19():
    reason = "kernel lacks UFFD_FEATURE_WP_HUGETLBFS_SHMEM (added in 5.19)"
    row = Result("wp-basic", "memfd", "skip", reason, "skipped")
    assert check(version("5.10.262"), [row]) == (1, [])
    assert check(version("6.1.192"), [row]) == (0, [])


def test_reason_explained_by_version_or_feature():
    v = version("5.10.262")
    assert reason_explained("needs kernel >= 6.7, running 5.10.262", v)
    assert reason_explained("kernel lacks UFFD_FEATURE_POISON (added in 6.6)", v)
    assert not reason_explained("kernel lacks UFFD_FEATURE_SIGBUS (added in 4.14)", v)
    assert reason_explained("pagemap does not report uffd-wp (bit 57, added in 5.14)", v)
    assert not reason_explained("needs root", v)
    assert not reason_explained("madvise refused with EINVAL on 5.10.262", v)
    assert not reason_explained("cannot reserve 20 x 2 MiB hugepages", v)


def test_declared_gates_follow_the_scenario_declarations():
    def run(ctx):
        raise AssertionError("not run")

    item = Scenario(
        id="needs-move", title="t", checks="c", run=run, memory=("anon",), min_kernel="6.8"
    )
    gates = expectations.declared_gates([item])
    assert [(g.scenario, g.verdict, g.before) for g in gates] == [("needs-move", "skip", "6.8")]


def test_every_expectation_names_a_catalogue_scenario_and_real_memory_kinds():
    import fnmatch

    for expected in expectations.EXPECTATIONS:
        assert any(fnmatch.fnmatchcase(sid, expected.scenario) for sid in CATALOGUE), expected
        assert set(expected.memory) <= set(ALL_KINDS), expected
        assert expected.why


def test_expectation_range_is_half_open():
    e = Expectation("x", ("anon",), "pass", "w", since="6.4", before="6.12")
    row = Result("x", "anon", "pass")
    assert not e.applies(row, version("6.3.9"))
    assert e.applies(row, version("6.4.0"))
    assert e.applies(row, version("6.11.99"))
    assert not e.applies(row, version("6.12.0"))
    assert e.kernels == "6.4 <= kernel < 6.12"


# --- guest outcomes ----------------------------------------------------------------------


def guest_outcome(status="ok", exit_code=1, files=None, stderr="", console="", detail=""):
    return GuestResult(
        status, exit_code, "", stderr, console, files or {}, 3.2, 21.5, "tcg", detail
    )


def report_bytes(results: list[Result], release="6.1.192") -> bytes:
    major, minor, patch = (int(n) for n in release.split("."))
    return json.dumps(
        {
            "kernel": {"release": f"{release}-amd64", "version": [major, minor, patch]},
            "summary": {"counts": {}, "total": len(results), "wall_s": 10.0},
            "results": [r.to_json() for r in results],
        }
    ).encode()


def test_a_report_with_failures_is_not_a_guest_failure():
    rows = [merge_row("anon", "known-bug", 3), Result("other", "anon", "fail", "bad")]
    run = from_guest(
        "debian:6.1",
        "6.1.0-56-amd64",
        "6.1.192-2",
        guest_outcome(exit_code=1, files={"report.json": report_bytes(rows)}),
    )
    assert not run.guest_failed
    assert [r.verdict for r in run.results] == ["known-bug", "fail"]
    assert run.version == (6, 1, 192)
    assert run.guest["boot_s"] == 3.2 and run.guest["accel"] == "tcg"


def test_no_report_becomes_one_error_row_with_console_and_stderr():
    run = from_guest(
        "debian:6.1",
        "6.1.0-56-amd64",
        None,
        guest_outcome(
            exit_code=1,
            stderr="Traceback ...\nModuleNotFoundError: No module named 'cffi'\n",
            console="line\n" * 100,
        ),
    )
    assert [(r.id, r.verdict) for r in run.results] == [(GUEST_ROW_ID, "error")]
    row = run.results[0]
    assert "no report.json" in row.reason and "ModuleNotFoundError" in row.reason
    assert row.facts["console_tail"].count("line") == 25
    assert run.version is None and not run.ok


def test_hung_or_panicked_guest_becomes_hang_or_error_row():
    hung = from_guest(
        "debian:5.10",
        "5.10.0-46-amd64",
        None,
        guest_outcome("hang", None, console="...\nrcu stall", detail="killed after 900 s"),
    )
    assert [(r.verdict, r.reason) for r in hung.results] == [
        ("hang", "killed after 900 s; no report.json from uffdharness run (exit code None)")
    ]
    assert hung.results[0].facts["console_tail"].endswith("rcu stall")
    panic = from_guest(
        "x",
        "r",
        None,
        guest_outcome(
            "error",
            None,
            console="Kernel panic - not syncing: VFS",
            detail="Kernel panic - not syncing: VFS (qemu exit 0)",
        ),
    )
    assert panic.results[0].verdict == "error"
    assert panic.results[0].reason.startswith("Kernel panic")


def test_guest_argv_expands_the_results_dir_in_the_guest():
    argv = run_argv(
        MatrixOptions(pattern="unregister-*", memory=("anon", "shmem"), timeout=12),
        "/work/main/.venv/bin/python",
    )
    assert argv[:2] == ["/bin/sh", "-c"]
    assert '"$UFFDHARNESS_RESULTS/report.json"' in argv[2]
    assert argv[4:] == [
        "/work/main/.venv/bin/python",
        "-m",
        "uffdharness",
        "run",
        "--quiet",
        "--timeout",
        "12",
        "-k",
        "unregister-*",
        "--memory",
        "anon",
        "--memory",
        "shmem",
    ]


# --- table, JSON, JUnit, merge -----------------------------------------------------------


def sample_runs() -> list[KernelRun]:
    old = kernel_run(
        "debian:6.1",
        "6.1.192",
        [
            merge_row("anon", "known-bug", 3),
            merge_row("hugetlb", "pass", 3),
            Result("wp-async-pagemap-scan", "anon", "skip", "needs kernel >= 6.7, running 6.1.192"),
        ],
    )
    new = kernel_run(
        "debian:6.12",
        "6.12.117",
        [
            merge_row("anon", "known-bug", 3),  # a violation: 6.12 has the fix
            merge_row("hugetlb", "pass", 3),
            Result("wp-async-pagemap-scan", "anon", "pass", "", "ok"),
        ],
    )
    broken = failed_run("debian:5.10", "error", "cannot prepare the kernel: no network")
    return [old, new, broken]


def test_table_has_a_column_per_kernel_and_marks_violations():
    out = io.StringIO()
    report.print_table(sample_runs(), out, wall_s=42.0)
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].split() == ["debian:6.1", "debian:6.12", "debian:5.10"]
    assert lines[1].split() == ["scenario[memory]", "6.1.192", "6.12.117", "?"]
    assert lines[2].split() == ["unregister-merge[anon]", "known", "known!", "-"]
    assert lines[3].split() == ["unregister-merge[hugetlb]", "pass", "pass", "-"]
    assert lines[4].split() == ["wp-async-pagemap-scan[anon]", "skip", "pass", "-"]
    assert lines[5].split() == ["(guest", "run)", "-", "-", "ERROR"]
    assert "known = known-bug" in text and "! = not what this kernel" in text
    assert (
        "expectation violations:\n  debian:6.12: unregister-merge[anon]: expected pass, "
        "vmas_after_unregister=2, got known-bug, vmas_after_unregister=3\n      why: fixed by "
        in text
    )
    assert "debian:5.10: (guest run) error: cannot prepare the kernel: no network" in text
    assert "3 kernels, 7 results in 42.0 s" in text
    assert "1 expectation violations, 1 guest failures" in text


def test_json_has_one_section_per_kernel_in_the_run_schema_and_round_trips(tmp_path):
    runs = sample_runs()
    path = tmp_path / "m.json"
    report.write_json(str(path), runs, 42.0, {"jobs": 2})
    document = json.loads(path.read_text())
    assert document["matrix"]["schema"] == report.SCHEMA and document["matrix"]["jobs"] == 2
    assert [k["spec"] for k in document["kernels"]] == ["debian:6.1", "debian:6.12", "debian:5.10"]
    section = document["kernels"][0]
    assert {"kernel", "summary", "results", "guest", "expectations"} <= set(section)
    assert section["results"][0]["facts"] == {"vmas_after_unregister": 3}
    assert set(section["guest"]) >= {"status", "boot_s", "total_s", "accel"}
    assert document["kernels"][1]["expectations"]["violations"][0]["memory"] == "anon"
    assert document["summary"]["violations"] == 1 and document["summary"]["ok"] is False
    again = report.load(str(path))
    assert [(r.spec, len(r.results)) for r in again] == [(r.spec, len(r.results)) for r in runs]
    assert again[0].results[0] == runs[0].results[0]


def test_junit_has_one_suite_per_kernel_with_expectations_as_a_case(tmp_path):
    path = tmp_path / "m.xml"
    report.write_junit(str(path), sample_runs())
    suites = {suite.name: suite for suite in junitparser.JUnitXml.fromfile(str(path))}
    assert list(suites) == ["debian:6.1", "debian:6.12", "debian:5.10"]
    assert (suites["debian:6.1"].tests, suites["debian:6.1"].failures) == (4, 0)
    assert suites["debian:6.1"].skipped == 1
    new = {case.classname: case for case in suites["debian:6.12"]}
    failure = new["debian:6.12.matrix-expectations"].result[0]
    assert isinstance(failure, junitparser.Failure) and "expected pass" in failure.message
    assert suites["debian:5.10"].errors == 1


def test_exit_status_needs_every_kernel_clean():
    runs = sample_runs()
    assert exit_status(runs) == 1
    assert exit_status(runs[:1]) == 0
    assert exit_status([]) == 1


def test_merge_combines_per_kernel_files_and_rechecks(tmp_path, capsys):
    runs = sample_runs()
    paths = []
    for run in runs[:2]:
        path = tmp_path / f"{run.spec.replace(':', '_')}.json"
        report.write_json(str(path), [run])
        paths.append(str(path))
    # a stale file claims no violations; the merge checks again with today's expectations
    stale = json.loads((tmp_path / "debian_6.12.json").read_text())
    stale["kernels"][0]["expectations"] = {"checked": 0, "violations": []}
    (tmp_path / "debian_6.12.json").write_text(json.dumps(stale))
    merged_json, merged_xml = tmp_path / "merged.json", tmp_path / "merged.xml"
    out = io.StringIO()
    rc = merge.main([*paths, "--json", str(merged_json), "--junit", str(merged_xml)], out)
    assert rc == 1  # the 6.12 violation
    assert out.getvalue().splitlines()[0].split() == ["debian:6.1", "debian:6.12"]
    merged = json.loads(merged_json.read_text())
    assert [k["spec"] for k in merged["kernels"]] == ["debian:6.1", "debian:6.12"]
    assert merged["summary"]["violations"] == 1
    assert merged["matrix"]["merged_from"] == paths
    assert len(list(junitparser.JUnitXml.fromfile(str(merged_xml)))) == 2
    assert merge.main(paths[:1], io.StringIO()) == 0


def test_merge_rejects_files_that_are_not_matrix_reports(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"kernel": {}, "summary": {}, "results": []}))
    assert merge.main([str(path)], io.StringIO()) == 2
    assert "not a uffdharness matrix report" in capsys.readouterr().err
    assert merge.main([str(tmp_path / "missing.json")], io.StringIO()) == 2


def test_a_kernel_path_is_headed_by_its_file_name_unless_that_is_ambiguous():
    def at(spec):
        return kernel_run(spec, "6.12.117", [merge_row("anon", "pass", 2)])

    runs = [at("/build/a/arch/x86/boot/bzImage,modules=/build/a/mod"), at("debian:6.12")]
    assert report.column_labels(runs) == ["bzImage", "debian:6.12"]
    twins = [at("/build/a/bzImage"), at("/build/b/bzImage")]
    assert report.column_labels(twins) == ["/build/a/bzImage", "/build/b/bzImage"]
