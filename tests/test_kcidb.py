"""KCIDB reports: real runs and a real matrix's JSON, validated with kcidb-io's schema."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_info import run_cli

from uffdharness import kcidb
from uffdharness.matrix import report
from uffdharness.matrix import runner as matrix_runner
from uffdharness.runner import Result
from uffdharness.scenarios import CATALOGUE

kcidb_io = pytest.importorskip("kcidb_io")  # the [test] extra

FIXTURE = Path(__file__).parent / "fixtures" / "matrix" / "debian-6.1-debian-src-7.3-host.json"
MERGE_FIX = CATALOGUE["unregister-merge"].known_bug


def valid(document: dict) -> dict:
    """``document`` after kcidb-io's validation against its latest schema."""
    schema = kcidb_io.schema.LATEST
    assert (schema.major, schema.minor) == (
        kcidb.SCHEMA_VERSION["major"],
        kcidb.SCHEMA_VERSION["minor"],
    )
    schema.validate(document)
    for kind in ("checkouts", "builds", "tests", "issues", "incidents"):
        ids = [item["id"] for item in document.get(kind, [])]
        assert len(ids) == len(set(ids)), f"{kind} ids repeat"
    return document


def by_path(document: dict) -> dict[str, dict]:
    return {test["path"]: test for test in document["tests"]}


def test_a_real_run_is_a_valid_report_with_a_test_per_pair(tmp_path):
    out, results = tmp_path / "k.json", tmp_path / "r.json"
    done = run_cli(
        "run",
        "--quiet",
        "-k",
        "unregister-merge,api-probe",
        "--kcidb",
        str(out),
        "--origin",
        "ci_lab",
        "--json",
        str(results),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = valid(json.loads(out.read_text()))
    (checkout,) = document["checkouts"]
    (build,) = document["builds"]
    assert build["checkout_id"] == checkout["id"] and build["status"] == "PASS"
    assert build["architecture"] == "x86_64"
    assert checkout["misc"]["release"] == json.loads(results.read_text())["kernel"]["release"]
    pairs = json.loads(results.read_text())["results"]
    tests = by_path(document)
    assert set(tests) == {f"uffdharness.{r['id']}.{r['memory']}" for r in pairs}
    for pair in pairs:
        test = tests[f"uffdharness.{pair['id']}.{pair['memory']}"]
        assert test["status"] == kcidb.STATUS[pair["verdict"]]
        assert test["build_id"] == build["id"]
        assert test["id"].startswith("ci_lab:") and test["id"].endswith(test["path"])
        assert test["misc"]["verdict"] == pair["verdict"]
        assert test["duration"] == pytest.approx(pair["duration_s"], abs=1e-3)
        assert pair["key"] in test["log_excerpt"]
    assert all(
        item["origin"] == "ci_lab"
        for kind in document.values()
        if isinstance(kind, list)
        for item in kind
    )
    # 6.18 has the merge fix: no incident, and no issue without one
    assert document["incidents"] == [] and document["issues"] == []


def test_every_verdict_maps_to_a_status_and_a_known_bug_to_an_issue_and_incident():
    shows = "3 VMAs; fixed in 6.4 by 'mm/uffd: allow vma to merge as much as possible', running"
    results = [
        Result("unregister-merge", "anon", "known-bug", shows, "vmas_after_unregister=3"),
        Result(
            "unregister-merge", "shmem", "fail", f"shows the bug fixed in 6.4 ('{MERGE_FIX.fix}')"
        ),
        Result("unregister-merge", "memfd", "fail", "layout differs", "vmas=4"),
        Result("unregister-merge", "hugetlb", "pass", "", "vmas_after_unregister=3"),
        Result("api-probe", "anon", "skip", "kernel lacks X", key="skipped"),
        Result(
            "move",
            "anon",
            "error",
            "ValueError: bad",
            "harness error",
            {"traceback": "Traceback (most recent call last):\nValueError: bad"},
        ),
        Result("move", "shmem", "hang", "no verdict within 30.0 s (killed)", "hang"),
        Result("stress", "anon", "pass", "", "bounces=4", {"pages_per_s": 12345}),
        Result("stress", "shmem", "error", "crashed", "crashed", {"pages_per_s": 1}),
    ]
    kernel = kcidb.Kernel("host", "6.1.0-57-amd64", "x86_64", "6.1.192-3")
    built = kcidb.Report("ci_lab", run_id="r1")
    built.add_kernel(kernel, results, "host")
    document = valid(built.to_json())
    tests = by_path(document)
    statuses = {path.removeprefix("uffdharness."): t["status"] for path, t in tests.items()}
    assert statuses == {
        "unregister-merge.anon": "FAIL",
        "unregister-merge.shmem": "FAIL",
        "unregister-merge.memfd": "FAIL",
        "unregister-merge.hugetlb": "PASS",
        "api-probe.anon": "SKIP",
        "move.anon": "ERROR",
        "move.shmem": "ERROR",
        "stress.anon": "PASS",
        "stress.anon.pages_per_s": "DONE",
        "stress.shmem": "ERROR",  # its facts were never measured: no DONE test
    }
    hang = tests["uffdharness.move.shmem"]
    assert hang["log_excerpt"].startswith("move[shmem]: TIMEOUT: no verdict")
    assert hang["misc"]["timeout"] is True
    assert "ValueError: bad" in tests["uffdharness.move.anon"]["log_excerpt"]
    measured = tests["uffdharness.stress.anon.pages_per_s"]
    assert measured["number"] == {"value": 12345.0, "unit": "pages/s"}
    assert measured["build_id"] == tests["uffdharness.stress.anon"]["build_id"]
    (issue,) = document["issues"]
    assert issue["report_subject"] == MERGE_FIX.fix
    assert issue["misc"]["fixed_in"] == MERGE_FIX.fixed_in == "6.4"
    assert issue["id"] == "ci_lab:issue/mm/uffd-allow-vma-to-merge-as-much-as-possible"
    assert issue["culprit"] == {"code": True, "tool": False, "harness": False}
    # the known-bug, and the fail that shows the same bug on a kernel claiming the fix
    linked = {incident["test_id"]: incident for incident in document["incidents"]}
    assert set(linked) == {
        tests["uffdharness.unregister-merge.anon"]["id"],
        tests["uffdharness.unregister-merge.shmem"]["id"],
    }
    for incident in linked.values():
        assert incident["issue_id"] == issue["id"] and incident["present"] is True
        assert incident["issue_version"] == issue["version"]
        assert incident["build_id"] == document["builds"][0]["id"]
    (checkout,) = document["checkouts"]
    assert checkout["id"] == "ci_lab:debian-6.1.192-3" and checkout["tree_name"] == "debian"


def _fixture_runs() -> list[matrix_runner.KernelRun]:
    runs = report.load(str(FIXTURE))
    for run in runs:
        run.check_expectations()
    return runs


def test_a_real_matrix_json_gives_a_checkout_and_build_per_kernel_and_the_6_1_bug():
    runs = _fixture_runs()
    document = valid(kcidb.matrix_report(runs, "ci_lab", run_id="r1"))
    checkouts = {c["misc"]["spec"]: c for c in document["checkouts"]}
    builds = {b["misc"]["spec"]: b for b in document["builds"]}
    assert set(checkouts) == set(builds) == {"debian:6.1.192-3", "debian-src:7.3", "host"}
    assert checkouts["debian:6.1.192-3"]["id"] == "ci_lab:debian-6.1.192-3"
    assert checkouts["debian:6.1.192-3"]["misc"]["package_version"] == "6.1.192-3"
    built = checkouts["debian-src:7.3"]
    assert built["id"] == "ci_lab:debian-7.3.4-1~bpo13+1" and built["patchset_hash"] == ""
    assert built["comment"].startswith("built here from linux-source-7.3")
    assert builds["debian-src:7.3"]["config_name"] == "tinyconfig+uffdharness"
    assert builds["debian-src:7.3"]["duration"] > 0
    for spec, build in builds.items():
        assert build["checkout_id"] == checkouts[spec]["id"] and build["status"] == "PASS"
    tests = document["tests"]
    old = [t for t in tests if t["build_id"] == builds["debian:6.1.192-3"]["id"]]
    paths = {t["path"]: t for t in old}
    assert set(paths) == {
        "uffdharness.unregister-merge.anon",
        "uffdharness.stress.anon",
        "uffdharness.stress.anon.pages_per_s",
        "uffdharness.expectations",
    }
    known = paths["uffdharness.unregister-merge.anon"]
    assert known["status"] == "FAIL" and known["misc"]["verdict"] == "known-bug"
    assert known["environment"]["misc"]["accel"] in ("tcg", "kvm")
    assert paths["uffdharness.expectations"]["status"] == "PASS"
    assert paths["uffdharness.stress.anon.pages_per_s"]["number"]["value"] > 0
    (issue,) = document["issues"]
    assert issue["report_subject"] == MERGE_FIX.fix and issue["misc"]["fixed_in"] == "6.4"
    (incident,) = document["incidents"]
    assert incident["test_id"] == known["id"] and incident["issue_id"] == issue["id"]
    assert incident["build_id"] == builds["debian:6.1.192-3"]["id"]
    # the same kernels from another run: the same checkouts, builds and issue; new tests
    again = kcidb.matrix_report(runs, "ci_lab", run_id="r2")
    for kind in ("checkouts", "builds", "issues"):
        assert [x["id"] for x in again[kind]] == [x["id"] for x in document[kind]]
    assert not {t["id"] for t in again["tests"]} & {t["id"] for t in tests}


def test_kernels_that_did_not_run_and_a_patched_build(tmp_path):
    patch = tmp_path / "fix.patch"
    patch.write_text("--- a/mm/x.c\n+++ b/mm/x.c\n")
    fragment = tmp_path / "extra.config"
    fragment.write_text("CONFIG_X=y\n")
    patched = matrix_runner.KernelRun(
        "debian-src:6.1,patch=" + str(patch),
        release="6.1.192",
        package_version="6.1.192-3",
        kernel={"release": "6.1.192", "version": [6, 1, 192], "machine": "x86_64"},
        results=[Result("unregister-merge", "anon", "pass", "", "vmas_after_unregister=2")],
        guest={"status": "ok", "accel": "tcg", "boot_s": 1.5, "total_s": 4.0},
        build={
            "self_built": True,
            "source": "linux-source-6.1 6.1.192-3",
            "identity": "linux-source-6.1=6.1.192-3",
            "patches": [str(patch)],
            "config": [str(fragment)],
            "carries_fixes": [MERGE_FIX.fix],
            "build_s": 16.0,
        },
    )
    runs = [
        patched,
        matrix_runner.unfinished_run(
            "debian-src:6.1,patch=broken.patch",
            matrix_runner.PREPARE_FAILED,
            "patch broken.patch does not apply: mm/userfaultfd.c hunk #2 FAILED at line 1666",
        ),
        matrix_runner.unfinished_run(
            "debian:6.12", matrix_runner.PREPARE_FAILED, "apt-get download failed"
        ),
        matrix_runner.interrupted_run("debian:5.10", 15, 3.0),
    ]
    for run in runs:
        run.check_expectations()
    document = valid(kcidb.matrix_report(runs, "ci_lab", run_id="r1"))
    checkouts = {c["misc"]["spec"]: c for c in document["checkouts"]}
    builds = {b["misc"]["spec"]: b for b in document["builds"]}
    ours = checkouts[patched.spec]
    inner = hashlib.sha256(patch.read_bytes()).hexdigest()
    digest = hashlib.sha256(f"{inner}\n".encode()).hexdigest()  # sha256sum | sha256sum
    assert ours["patchset_hash"] == digest
    assert ours["id"] == f"ci_lab:debian-6.1.192-3+{digest[:16]}"
    assert ours["patchset_files"] == [{"name": "fix.patch", "url": patch.as_uri()}]
    assert ours["misc"]["carries_fixes"] == [MERGE_FIX.fix]
    # the digests the build recorded serve where the patch cannot be read (a merge elsewhere)
    patch.unlink()
    patched.build["patch_sha256"] = [inner]
    again = kcidb.matrix_report([patched], "ci_lab", run_id="r2")
    assert again["checkouts"][0]["id"] == ours["id"]
    assert again["checkouts"][0]["patchset_hash"] == digest
    assert builds[patched.spec]["input_files"] == [
        {"name": "extra.config", "url": fragment.as_uri()}
    ]
    broken = "debian-src:6.1,patch=broken.patch"
    assert checkouts[broken]["valid"] is False
    assert builds[broken]["status"] == "FAIL"
    assert "does not apply" in builds[broken]["log_excerpt"]
    assert builds["debian:6.12"]["status"] == "MISS"  # the download, not the kernel
    statuses = {
        t["build_id"]: (t["path"], t["status"]) for t in document["tests"] if "guest" in t["path"]
    }
    assert sorted(statuses.values()) == [("uffdharness.guest", "MISS")] * 3
    assert document["issues"] == []  # the patched kernel passes


def test_matrix_on_the_host_and_merge_write_valid_reports(tmp_path):
    out, matrix_json = tmp_path / "k.json", tmp_path / "m.json"
    done = run_cli(
        "matrix",
        "--kernel",
        "host",
        "-k",
        "unregister-merge",
        "--memory",
        "anon",
        "--quiet",
        "--kcidb",
        str(out),
        "--json",
        str(matrix_json),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = valid(json.loads(out.read_text()))
    assert sorted(by_path(document)) == [
        "uffdharness.expectations",
        "uffdharness.unregister-merge.anon",
    ]
    merged = tmp_path / "merged.json"
    done = run_cli(
        "matrix",
        "merge",
        str(FIXTURE),
        str(matrix_json),
        "--kcidb",
        str(merged),
        "--origin",
        "merge_job",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    document = valid(json.loads(merged.read_text()))
    assert {t["origin"] for t in document["tests"]} == {"merge_job"}
    assert len(document["incidents"]) == 1


def test_a_bad_origin_or_path_is_refused_before_the_run(tmp_path):
    done = run_cli(
        "run", "-k", "api-probe", "--kcidb", str(tmp_path / "k.json"), "--origin", "Lab-1"
    )
    assert done.returncode == 2
    assert "'Lab-1' is not a KCIDB origin" in done.stderr
    done = run_cli("run", "-k", "api-probe", "--kcidb", str(tmp_path))
    assert done.returncode == 2 and "--kcidb:" in done.stderr
    with pytest.raises(ValueError, match="not a KCIDB origin"):
        kcidb.Report("a:b")


def test_writing_needs_no_kcidb_io():
    code = (
        "import sys; from uffdharness import kcidb, system; "
        "kcidb.run_report(system.facts(), []); print('kcidb_io' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


def test_debian_version_from_uname():
    assert kcidb.debian_version("#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-01-02)") == (
        "6.1.192-3"
    )
    assert kcidb.debian_version("#1 SMP PREEMPT_DYNAMIC @0") is None


@pytest.mark.timeout(120)
def test_bench_figures_are_done_tests_with_their_number(tmp_path):
    out = tmp_path / "k.json"
    done = run_cli(
        "bench",
        "--quick",
        "--reps",
        "1",
        "--pages",
        "64",
        "--workloads",
        "anon,rwp",
        "--json",
        "--kcidb",
        str(out),
    )
    assert done.returncode in (0, 1), done.stderr  # 1: a target missed
    figures = json.loads(done.stdout)["figures"]
    document = valid(json.loads(out.read_text()))
    (build,) = document["builds"]
    tests = by_path(document)
    for figure in figures:
        path = ".".join(
            ["uffdharness.bench"]
            + [kcidb._segment(figure[key]) for key in ("workload", "engine", "placement")]
        )
        test = tests.pop(path)
        assert test["status"] == "DONE" and test["build_id"] == build["id"]
        assert test["number"] == {"value": figure["median"], "unit": figure["unit"]}
        assert test["misc"]["missed"] == figure["missed"]
    assert any(
        path.startswith("uffdharness.bench.anon-4K_COPY.native.") for path in by_path(document)
    )
    # whatever is left is a workload the kernel or the machine could not run (RWP before 7.3)
    assert all(test["status"] == "SKIP" for test in tests.values())
    done = run_cli("bench", "--kernel", "debian:7.3", "--kcidb", str(out))
    assert done.returncode == 2 and "--kcidb: only on the running kernel" in done.stderr
    done = run_cli("bench", "--kcidb", str(out), "demand-paging")
    assert done.returncode == 2 and "not demand-paging's" in done.stderr
