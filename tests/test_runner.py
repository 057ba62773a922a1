"""The runner's own behaviour, with deliberately broken scenarios: hangs, crashes,
exceptions, skips, and verdicts keyed to the kernel version."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import junitparser
import pytest

from uffdharness import reports, system
from uffdharness.abi import Feature
from uffdharness.hugepages import counts, pool_frozen
from uffdharness.kernelversion import parse
from uffdharness.memory import MemoryKind
from uffdharness.runner import (
    EXIT_PASS,
    EXIT_SKIP,
    exit_status,
    judge,
    run,
    run_pair,
    select,
)
from uffdharness.scenarios import CATALOGUE
from uffdharness.scenarios.model import KnownBug, Observation, Scenario, Skip
from uffdharness.uffd import Userfaultfd, probe_api

BUG = KnownBug(
    fixed_in="6.4", fix="the fix", signature="3 VMAs", backports=("6.1.90",), shows=({"vmas": 3},)
)


def info_for(release: str, features: Feature | None = None) -> system.SystemFacts:
    offered = probe_api().features if features is None else features
    uffd = dataclasses.replace(system.facts().uffd, features_mask=int(offered))
    return dataclasses.replace(system.facts(), kernel=parse(release), uffd=uffd)


def make(run_fn, **declared) -> Scenario:
    declared.setdefault("id", "synthetic")
    declared.setdefault("title", "synthetic")
    declared.setdefault("checks", "the runner")
    return Scenario(run=run_fn, **declared)


def ok(ctx) -> Observation:
    return Observation({"memory": ctx.memory.value}, True, "fine")


def buggy(ctx) -> Observation:
    return Observation({"vmas": 3}, False, "vmas=3", "3 VMAs")


def hangs_in_fault(ctx) -> Observation:
    region = ctx.region(1)
    uffd = ctx.uffd()
    uffd.register(region)
    region.touch(0)  # nobody resolves this fault: blocks forever
    raise AssertionError("unreachable")


def crashes(ctx) -> Observation:
    os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError("unreachable")


def raises(ctx) -> Observation:
    raise RuntimeError("harness bug")


def skips(ctx) -> Observation:
    raise Skip("needs something special")


def returns_garbage(ctx):
    return lambda: None  # not picklable


KERNEL = info_for("6.18.44")


def test_pass():
    result = run_pair(make(ok), "memfd", KERNEL, 10, None)
    assert (result.verdict, result.facts, result.key) == ("pass", {"memory": "memfd"}, "fine")


def test_hang_becomes_a_verdict_quickly():
    started = time.monotonic()
    result = run_pair(make(hangs_in_fault, timeout=1.0), "anon", KERNEL, 30, None)
    assert result.verdict == "hang" and "killed" in result.reason
    assert time.monotonic() - started < 5


def test_run_timeout_caps_a_scenarios_declared_timeout():
    started = time.monotonic()
    result = run_pair(make(hangs_in_fault, timeout=20.0), "anon", KERNEL, 1.0, None)
    assert result.verdict == "hang" and "within 1.0 s" in result.reason
    assert time.monotonic() - started < 5


def budget(ctx) -> Observation:
    return Observation({"timeout": ctx.timeout}, True, "fine")


def test_scenario_is_given_the_runs_timeout():
    assert run_pair(make(budget), "anon", KERNEL, 7.5, None).facts == {"timeout": 7.5}
    assert run_pair(make(budget, timeout=2.0), "anon", KERNEL, 7.5, None).facts == {"timeout": 2.0}


@pytest.mark.timeout(60)
def test_per_vma_lock_race_fits_a_short_timeout():
    """Its race and the grace for hung threads scale down with --timeout (a fifth and
    three tenths of it), so a short timeout gives a verdict, not a hang."""
    result = run_pair(CATALOGUE["per-vma-lock-race"], "anon", KERNEL, 2.5, None)
    assert result.verdict == "pass", result.reason
    assert result.facts["race_seconds"] == 0.5
    assert result.duration_s < 2.5


def test_crash_becomes_error_with_signal_name():
    result = run_pair(make(crashes), "anon", KERNEL, 10, None)
    assert result.verdict == "error" and "SIGSEGV" in result.reason


def test_exception_becomes_error_with_traceback():
    result = run_pair(make(raises), "anon", KERNEL, 10, None)
    assert result.verdict == "error" and "RuntimeError: harness bug" in result.reason
    assert "Traceback" in result.facts["traceback"]


def test_unpicklable_result_is_an_error_not_a_crash():
    result = run_pair(make(returns_garbage), "anon", KERNEL, 10, None)
    assert result.verdict == "error" and "unpicklable" in result.reason


def test_scenario_skip_carries_reason():
    result = run_pair(make(skips), "anon", KERNEL, 10, None)
    assert (result.verdict, result.reason) == ("skip", "needs something special")


def test_declared_requirements_skip_with_precise_reason():
    old = info_for("5.10.0-30-amd64", Feature.EVENT_FORK)
    too_old = run_pair(make(ok, min_kernel="6.4"), "anon", old, 10, None)
    assert too_old.verdict == "skip" and "needs kernel >= 6.4, running 5.10.0" in too_old.reason
    lacks = run_pair(make(ok, features=Feature.MOVE), "anon", old, 10, None)
    assert lacks.verdict == "skip"
    assert lacks.reason == "kernel lacks UFFD_FEATURE_MOVE (added in 6.8)"
    hugetlb = run_pair(make(ok), "hugetlb", KERNEL, 10, "no hugepages here")
    assert (hugetlb.verdict, hugetlb.reason) == ("skip", "no hugepages here")


@pytest.mark.parametrize(
    "release, verdict",
    [
        ("6.1.0-30-amd64", "known-bug"),  # Debian: patch level unknown, so no backport credit
        ("6.1.89", "known-bug"),
        ("6.1.90", "fail"),  # carries the backport: the bug is a regression
        ("6.4.0", "fail"),
        ("5.10.200", "known-bug"),
    ],
)
def test_known_bug_verdict_keyed_to_kernel(release, verdict):
    result = run_pair(make(buggy, known_bug=BUG), "anon", info_for(release), 10, None)
    assert result.verdict == verdict
    if verdict == "known-bug":
        assert "fixed in 6.4 by 'the fix'" in result.reason
    else:
        assert "shows the bug fixed in 6.4" in result.reason


def test_unexpected_behaviour_without_bug_signature_is_fail():
    observation = Observation({}, False, "odd", "something else")
    assert judge(make(ok, known_bug=BUG), parse("5.10.0"), observation) == (
        "fail",
        "something else",
    )


def test_run_continues_after_hang_and_restores_hugepages():
    pairs = [
        (make(hangs_in_fault, id="hangs", timeout=0.5), "anon"),
        (make(ok, id="fine", hugepages=2), "hugetlb"),
        (make(crashes, id="crashes"), "memfd"),
    ]
    fds_before = set(os.listdir("/proc/self/fd"))
    seen = []
    with pool_frozen():  # no other harness process resizes the pool meanwhile
        before = counts().persistent
        results = run(pairs, timeout=10, info=KERNEL, progress=lambda *a: seen.append(a[:2]))
        after = counts().persistent
    verdicts = [r.verdict for r in results]
    assert verdicts[0] == "hang" and verdicts[2] == "error"
    assert verdicts[1] in ("pass", "skip")
    assert after == before
    assert set(os.listdir("/proc/self/fd")) == fds_before
    assert seen[-1] == (3, 3)
    assert exit_status(results) == 1
    assert exit_status(results[1:2]) == (EXIT_PASS if verdicts[1] == "pass" else EXIT_SKIP)


def test_select_by_pattern_and_memory():
    pairs = select(CATALOGUE.values(), "unregister-merge", ["anon", "memfd"])
    assert [(s.id, kind) for s, kind in pairs] == [
        ("unregister-merge", "anon"),
        ("unregister-merge", "memfd"),
    ]
    assert {s.id for s, _ in select(CATALOGUE.values(), "event-*")} >= {
        "event-fork",
        "event-remap",
    }
    several = select(CATALOGUE.values(), "rwp-s*,api-probe", ["anon"])
    assert [s.id for s, _ in several] == [
        "api-probe",
        "rwp-sync",
        "rwp-set-mode",
        "rwp-swap",
        "rwp-swap-cow",
    ]


def test_catalogue_is_well_formed():
    for item in CATALOGUE.values():
        assert item.id == item.id.lower() and " " not in item.id
        assert item.title and len(item.checks.split()) >= 8, item.id
        assert item.memory and len(set(item.memory)) == len(item.memory)
        for kind in item.memory:
            MemoryKind(kind)
        if item.known_bug:
            parse(item.known_bug.fixed_in)
            assert item.known_bug.fix and item.known_bug.signature


def test_reports_validate(tmp_path):
    results = run(
        [
            (make(ok, id="fine"), "anon"),
            (make(buggy, id="bug", known_bug=BUG), "anon"),
            (make(raises, id="broken"), "anon"),
            (make(skips, id="skipped"), "anon"),
        ],
        info=info_for("6.1.0-30-amd64"),
    )
    info = info_for("6.1.0-30-amd64")
    report = reports.to_json(info, results, 1.0)
    assert report["kernel"]["version"] == [6, 1, 0]
    assert [r["verdict"] for r in report["results"]] == ["pass", "known-bug", "error", "skip"]
    json.dumps(report)

    junit_path = tmp_path / "r.xml"
    reports.write_junit(str(junit_path), [("kernel-6.1", results)])
    parsed = junitparser.JUnitXml.fromfile(str(junit_path))
    suite = next(iter(parsed))
    assert (suite.tests, suite.errors, suite.skipped, suite.failures) == (4, 1, 1, 0)
    cases = {case.classname: case for case in suite}
    assert cases["kernel-6.1.broken"].result[0].message.startswith("RuntimeError")

    ktap = reports.ktap(results).splitlines()
    assert ktap[:2] == ["KTAP version 1", "1..4"]
    assert ktap[2:5] == ["  KTAP version 1", "  1..1", "  ok 1 anon"]
    assert ktap[5] == "ok 1 fine"
    assert ktap[8].startswith("  ok 1 anon # XFAIL")
    assert "  not ok 1 anon # ERROR RuntimeError" in "\n".join(ktap)
    assert "not ok 3 broken" in ktap
    assert ktap[-2].startswith("ok 4 skipped # SKIP")


def test_cli_run_exit_code_and_outputs(tmp_path):
    import subprocess
    import sys

    json_path, junit_path = tmp_path / "r.json", tmp_path / "r.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "uffdharness",
            "run",
            "-k",
            "unregister-merge",
            "--memory",
            "anon",
            "--json",
            str(json_path),
            "--junit",
            str(junit_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unregister-merge  anon" in proc.stdout
    # stderr is a pipe: the table already lists every pair, progress must not repeat it.
    assert proc.stderr == ""
    data = json.loads(json_path.read_text())
    assert data["results"][0]["facts"]["vmas_after_unregister"] == 2
    junitparser.JUnitXml.fromfile(str(junit_path))
    listing = subprocess.run(
        [sys.executable, "-m", "uffdharness", "run", "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "unregister-merge" in listing.stdout and "fixed in 6.4" in listing.stdout


def test_uffd_left_open_by_scenario_does_not_leak_into_parent():
    fds = set(os.listdir("/proc/self/fd"))

    def leaves_uffd_open(ctx):
        Userfaultfd.open()  # never closed: lives and dies with the child
        return Observation({}, True, "ok")

    assert run_pair(make(leaves_uffd_open), "anon", KERNEL, 10, None).verdict == "pass"
    assert set(os.listdir("/proc/self/fd")) == fds


def test_progress_off_a_terminal_is_a_heartbeat_not_a_copy_of_the_table(monkeypatch):
    import io

    from uffdharness.cli import run as run_command
    from uffdharness.runner import Result

    stream = io.StringIO()
    show = run_command._progress_printer(stream)
    for index in range(3):
        show(index, 3, None, f"s{index}[anon]")
        show(index + 1, 3, Result(f"s{index}", "anon", "pass"), f"s{index}[anon]")
    assert stream.getvalue() == ""  # a short run: nothing but the table
    monkeypatch.setattr(run_command, "HEARTBEAT_S", 0.0)
    show = run_command._progress_printer(stream)
    show(1, 3, None, "s1[anon]")
    show(2, 3, Result("s1", "anon", "pass"), "s1[anon]")
    assert stream.getvalue() == "[2/3] running s1[anon]\n"
