"""uffdharness stress on the real kernel: small areas, few bounces, every run under a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from uffdharness import stress
from uffdharness.handler import Fill
from uffdharness.hugepages import HugepagePool
from uffdharness.memory import allocate

pytestmark = pytest.mark.timeout(120)

SMALL_KINDS = ("anon", "shmem", "memfd", "memfd-private")


def small(kind: str = "anon", **overrides) -> stress.StressConfig:
    settings = {"memory": kind, "mib": 1, "bounces": 4, "threads": 2}
    settings.update(overrides)
    return stress.StressConfig(**settings)


@pytest.mark.parametrize("kind", SMALL_KINDS)
def test_every_counter_survives_every_bounce(kind):
    result = stress.run(small(kind, bounces=8))
    assert result.verdict == "pass", result.problems
    assert len(result.bounces) == 8
    pages = result.pages
    for bounce in result.bounces:
        # every page went over once: by a handler (a fault) or by a copier
        assert bounce.copies + bounce.copy_eexist >= pages
        assert bounce.increments >= 2  # each locker at least once
    assert [b.wait for b in result.bounces] == ["read"] * 4 + ["poll"] * 4
    assert [b.lockers for b in result.bounces] == ["random", "sequential"] * 4
    assert [b.start for b in result.bounces] == ["racing", "racing", "sliced", "sliced"] * 2


@pytest.mark.skipif(os.geteuid() != 0, reason="hugetlb needs root to reserve hugepages")
@pytest.mark.parametrize("kind", ["hugetlb", "hugetlb-private"])
def test_hugetlb_kinds(kind):
    config = small(kind, mib=4)
    pages = stress.area_pages(stress.MemoryKind(kind), config.mib, config.threads)
    with HugepagePool(2 * pages):
        result = stress.run(config)
    assert result.verdict == "pass", result.problems
    assert result.page_size == 2 << 20


@pytest.mark.parametrize("engine", ["thread", "process"])
def test_other_engines_poll(engine):
    result = stress.run(small(engine=engine, bounces=2))
    assert result.verdict == "pass", result.problems
    assert {b.wait for b in result.bounces} == {"poll"}


def test_write_protect_round_trips():
    result = stress.run(small(wp=True, mib=2))
    assert result.verdict == "pass", result.problems
    assert sum(b.wp_faults for b in result.bounces) > 0


def test_seconds_bound_the_run():
    started = time.monotonic()
    result = stress.run(small(bounces=None, seconds=0.3, min_bounces=2))
    assert result.verdict == "pass", result.problems
    assert len(result.bounces) >= 2
    assert time.monotonic() - started < 10


def test_a_handler_that_loses_data_fails(monkeypatch):
    """The check can fail: handlers that resolve faults with zeros instead of the other
    area's page lose the lockers' counts, and the run names the page and the bounce."""
    monkeypatch.setattr(stress, "Copy", lambda _source: Fill(b"\0" * 16))
    result = stress.run(small(mib=4, bounces=8, churn=False))
    assert result.verdict == "fail"
    assert any("page" in problem and "bounce" in problem for problem in result.problems)


def test_threads_past_the_deadline_fail_and_are_reaped():
    """A bounce longer than its deadline is a failure; dst is unregistered, which frees any
    thread waiting in a fault, and every thread is joined before the memory goes."""
    result = stress.run(small(mib=8, bounces=2, deadline=0.0005))
    assert result.verdict == "fail"
    assert any("deadline" in problem for problem in result.problems), result.problems


def test_verify_names_the_first_bad_page():
    with allocate("anon", 8) as area:
        counts = stress.ffi.new("uint64_t[]", 8)
        base = stress.ffi.cast("char *", area.addr)
        stress.lib.uh_stress_init(base, 8, area.page_size, counts)
        found = stress.ffi.new("uint64_t *")
        assert stress.lib.uh_stress_verify(base, 8, area.page_size, counts, found) == -1
        counts[5] = 7
        assert stress.lib.uh_stress_verify(base, 8, area.page_size, counts, found) == 5
        assert found[0] == 1


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "uffdharness", "stress", *args],
        capture_output=True,
        text=True,
        timeout=90,
        **kwargs,
    )


def test_cli_json(tmp_path):
    out = tmp_path / "stress.json"
    done = _cli("--memory", "anon", "--memory", "shmem", "--mib", "1", "--bounces", "2",
                "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    runs = {run["memory"]: run for run in document["runs"]}
    assert set(runs) == {"anon", "shmem"}
    for run in runs.values():
        assert run["verdict"] == "pass"
        assert run["bounces_done"] == 2
        assert run["pages_per_s"] > 0 and run["seconds"] > 0
    assert "anon" in done.stdout and "pages/s" in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--bounces", "0"],
        ["--memory", "bogus"],
        ["--bounces", "2", "--seconds", "1"],
        ["--engine", "ctypes"],
        ["--json", "/nonexistent-dir/x.json"],
    ],
)
def test_cli_rejects_bad_input(args):
    done = _cli(*args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("usage:") or "error" in done.stderr


def test_sigint_stops_a_long_run_cleanly():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uffdharness",
            "stress",
            "--memory",
            "anon",
            "--mib",
            "2",
            "--seconds",
            "60",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, err
    assert "interrupted by SIGINT" in err
