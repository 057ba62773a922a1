"""KTAP output: a test per scenario with its memory kinds nested, known bugs as XFAIL, hangs
as TIMEOUT, harness errors as ERROR; checked against the spec's rules (tests/ktap_grammar)
and, where a Debian linux-source tree is cached, by the kernel's own kunit_parser."""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
from pathlib import Path

import ktap_grammar
import pytest

from uffdharness import reports
from uffdharness.runner import Result

pytestmark = pytest.mark.timeout(120)

RESULTS = [
    Result(
        "unregister-merge",
        "anon",
        "known-bug",
        "vmas_after_unregister=3; fixed in 6.4 by "
        "'mm/uffd: allow vma to merge as much as possible', running 6.1.0",
    ),  # fmt: skip
    Result("unregister-merge", "shmem", "pass"),
    Result("wp-fork", "anon", "hang", "no verdict within 30 s"),
    Result("wp-fork", "shmem", "error", "RuntimeError: boom # with a hash"),
    Result("wp-fork", "hugetlb", "fail", "wp_bits=0, expected 512"),
    Result("rwp-async", "anon", "skip", "kernel lacks UFFD_FEATURE_RWP (added in 7.3)"),
]


def test_every_verdict_in_its_directive():
    text = reports.ktap(RESULTS)
    assert ktap_grammar.problems(text) == []
    lines = text.splitlines()
    assert lines[:2] == ["KTAP version 1", "1..3"]
    assert lines[2:4] == ["  KTAP version 1", "  1..2"]
    assert lines[4].startswith("  ok 1 anon # XFAIL vmas_after_unregister=3; fixed in 6.4 by")
    assert "  ok 2 shmem" in lines and "ok 1 unregister-merge" in lines
    assert "  not ok 1 anon # TIMEOUT no verdict within 30 s" in lines
    assert "  not ok 2 shmem # ERROR RuntimeError: boom # with a hash" in lines
    assert "  # wp-fork hugetlb: wp_bits=0, expected 512" in lines
    assert "  not ok 3 hugetlb" in lines and "not ok 2 wp-fork" in lines
    assert "ok 3 rwp-async # SKIP every memory kind skipped" in lines
    assert lines[-1] == "# Totals: pass:1 fail:1 xfail:1 xpass:0 skip:1 error:2"


def test_kernels_nest_one_level_more():
    text = reports.ktap_kernels([("debian:6.1 6.1.0-30-amd64", RESULTS[:2]),
                                 ("debian:6.12 6.12.9-amd64", RESULTS[1:2])])  # fmt: skip
    assert ktap_grammar.problems(text) == []
    lines = text.splitlines()
    assert lines[:3] == ["KTAP version 1", "1..2", "  KTAP version 1"]
    assert "    ok 1 anon # XFAIL" in "\n".join(lines)
    assert lines[-3:-1] == ["  ok 1 unregister-merge", "ok 2 debian:6.12 6.12.9-amd64"]


@pytest.mark.parametrize(
    "broken, why",
    [
        ("KTAP version 1\n1..2\nok 1 a\n", "plan says 2"),
        ("KTAP version 1\n1..1\nok 2 a\n", "test number 2"),
        ("KTAP version 1\n1..1\n KTAP version 1\n 1..1\n ok 1 x\nok 1 a\n", "not a multiple"),
        ("KTAP version 1\n1..1\nok 1 a # TIMEOUT 30 s\n", "TIMEOUT on an ok line"),
        ("KTAP version 1\n1..1\nnot ok 1 a # XFAIL x\n", "XFAIL on a not-ok"),
        ("KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n  not ok 1 x\nok 1 a\n", "parent ok"),
        ("KTAP version 1\n1..1\n  KTAP version 1\n  1..2\n  ok 1 x\nok 1 a\n", "subtest plan"),
        ("TAP version 13\n1..0\n", "not 'KTAP version 1'"),
        ("KTAP version 1\n1..1\n  KTAP version 1\n  1..1\n  ok 1 x\n", "never got"),
    ],
)
def test_the_grammar_check_rejects_what_breaks_the_spec(broken, why):
    found = ktap_grammar.problems(broken)
    assert any(why in problem for problem in found), found


def test_a_real_run(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "uffdharness",
            "run",
            "-k",
            "unregister-merge,api-probe,rwp-async",
            "--ktap",
            "--quiet",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode in (0, 4), done.stderr
    assert ktap_grammar.problems(done.stdout) == []
    names = [name for depth, _, name, _ in ktap_grammar.check(done.stdout).results if depth == 0]
    assert names == ["api-probe", "unregister-merge", "rwp-async"]


def _kunit_parser():
    """The kernel's tools/testing/kunit/kunit_parser.py from a cached Debian linux-source
    tree (uffdharness matrix --kernel debian-src:X.Y unpacks one)."""
    cache = Path.home() / ".cache" / "uffdharness" / "kernels" / "sources" / "debian"
    found = sorted(cache.glob("linux-source-*/tree/*/tools/testing/kunit/kunit_parser.py"))
    found += sorted(cache.glob("linux-source-*/tree/tools/testing/kunit/kunit_parser.py"))
    if not found:
        pytest.skip(f"no Debian linux-source tree with kunit_parser.py under {cache}")
    sys.path.insert(0, str(found[-1].parent))
    try:
        return importlib.import_module("kunit_parser"), importlib.import_module("kunit_printer")
    finally:
        sys.path.pop(0)


def test_the_kernels_kunit_parser_reads_it():
    parser, printer = _kunit_parser()
    text = reports.ktap_kernels([("debian:6.1", RESULTS), ("debian:6.12", RESULTS[1:2])])
    test = parser.parse_run_tests(text.splitlines(), printer.Printer(output=io.StringIO()))
    counts = test.counts
    assert counts.errors == 0
    # kunit_parser knows SKIP; XFAIL on an ok line is a pass; TIMEOUT and ERROR are failures
    assert (counts.passed, counts.failed, counts.skipped) == (3, 3, 1)
    assert [sub.name for sub in test.subtests] == ["debian:6.1", "debian:6.12"]
