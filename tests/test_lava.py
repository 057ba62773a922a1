"""LAVA test-case signals: a real run's stdout, every verdict, the matrix's ids."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from test_cli_info import run_cli

from uffdharness import lava
from uffdharness.ciformat import kernel_labels
from uffdharness.matrix import report
from uffdharness.runner import Result

FIXTURE = Path(__file__).parent / "fixtures" / "matrix" / "debian-6.1-debian-src-7.3-host.json"

# What a LAVA test shell accepts (lava_dispatcher's pattern, with LAVA's test case id rules).
SIGNAL = re.compile(
    r"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=(?P<id>[A-Za-z0-9_.-]+) "
    r"RESULT=(?P<result>pass|fail|skip|unknown)"
    r"(?: MEASUREMENT=(?P<measurement>[-+0-9.e]+) UNITS=(?P<units>\S+))?>"
)


def signals(text: str) -> list[re.Match]:
    lines = [line for line in text.splitlines() if "LAVA_SIGNAL" in line]
    found = [SIGNAL.fullmatch(line) for line in lines]
    assert all(found), lines
    return found  # type: ignore[return-value]


def test_a_real_run_prints_a_signal_per_result_before_the_table(tmp_path):
    out = tmp_path / "r.json"
    done = run_cli(
        "run",
        "-k",
        "unregister-merge,api-probe,stress",
        "--memory",
        "anon",
        "--memory",
        "hugetlb-1g",
        "--lava",
        "--quiet",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())["results"]
    found = signals(done.stdout)
    assert [m["id"] for m in found] == [f"{r['id']}.{r['memory']}" for r in results]
    assert [m["result"] for m in found] == [lava.RESULT[r["verdict"]] for r in results]
    stress = next(m for m in found if m["id"] == "stress.anon")
    assert stress["units"] == "pages/s" and float(stress["measurement"]) > 0
    lines = done.stdout.splitlines()
    table = next(i for i, line in enumerate(lines) if line.startswith("kernel "))
    assert all(i < table for i, line in enumerate(lines) if "LAVA_SIGNAL" in line)
    for result in results:
        if result["verdict"] == "skip":  # hugetlb-1g without a 1 GiB page, for one
            case = f"{result['id']}.{result['memory']}"
            note = lines[lines.index(f"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID={case} RESULT=skip>") - 1]
            assert note.startswith(f"uffdharness: {case} skip: ")


def test_every_verdict_and_its_note():
    def lines(result: Result, kernel: str | None = None) -> list[str]:
        return lava.signal_lines(result, kernel)

    assert lines(Result("move", "anon", "pass", key="ok")) == [
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=move.anon RESULT=pass>"
    ]
    known = Result("unregister-merge", "shmem", "known-bug", "3 VMAs; fixed in 6.4 by 'x'")
    assert lines(known) == [
        "uffdharness: unregister-merge.shmem known-bug: 3 VMAs; fixed in 6.4 by 'x'",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=unregister-merge.shmem RESULT=pass>",
    ]
    hang = Result("move", "hugetlb-private", "hang", "no verdict within 30.0 s (killed)")
    assert lines(hang) == [
        "uffdharness: move.hugetlb-private TIMEOUT: no verdict within 30.0 s (killed)",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=move.hugetlb-private RESULT=fail>",
    ]
    error = Result("move", "anon", "error", "ValueError: a\nmultiline <LAVA_SIGNAL_X> reason")
    note, signal = lines(error)
    assert note == "uffdharness: move.anon error: ValueError: a multiline <LAVA-SIGNAL_X> reason"
    assert signal.endswith("RESULT=fail>")
    assert lines(Result("move", "anon", "fail", "bad"))[-1].endswith("RESULT=fail>")
    assert lines(Result("move", "anon", "skip", "kernel lacks MOVE")) == [
        "uffdharness: move.anon skip: kernel lacks MOVE",
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=move.anon RESULT=skip>",
    ]
    measured = Result("stress", "anon", "pass", facts={"pages_per_s": 249007})
    assert lines(measured, "debian-6.1") == [
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=debian-6.1.stress.anon RESULT=pass "
        "MEASUREMENT=249007 UNITS=pages/s>"
    ]
    crashed = Result("stress", "anon", "error", "crashed", facts={"pages_per_s": 1})
    assert "MEASUREMENT" not in lines(crashed)[-1]


def test_the_printer_flushes_each_signal_as_it_arrives_and_passes_progress_on():
    class Stream(io.StringIO):
        flushed: list[str] = []

        def flush(self) -> None:
            self.flushed.append(self.getvalue())

    seen = []
    out = Stream()
    printer = lava.SignalPrinter(out, then=lambda *call: seen.append(call))
    printer(0, 2, None, "move[anon]")
    assert out.getvalue() == ""
    first = Result("move", "anon", "pass")
    printer(1, 2, first, first.name)
    assert out.flushed == ["<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=move.anon RESULT=pass>\n"]
    assert seen == [(0, 2, None, "move[anon]"), (1, 2, first, "move[anon]")]


def test_the_matrix_names_the_kernel_in_each_case():
    runs = report.load(str(FIXTURE))
    for run in runs:
        run.check_expectations()
    out = io.StringIO()
    lava.print_matrix(runs, out)
    found = {m["id"]: m["result"] for m in signals(out.getvalue())}
    assert found["debian-6.1.192-3.unregister-merge.anon"] == "pass"  # known-bug
    assert found["debian-6.1.192-3.expectations"] == "pass"
    assert found["debian-src-7.3.stress.anon"] == "pass"
    assert set(found) >= {"host.unregister-merge.anon", "host.expectations"}
    assert "uffdharness: debian-6.1.192-3.unregister-merge.anon known-bug: " in out.getvalue()
    # two specs that read alike stay apart
    assert kernel_labels(["debian:6.1", "debian/6.1"]) == ["debian-6.1", "debian-6.1-2"]


def test_matrix_lava_on_the_host():
    done = run_cli(
        "matrix", "--kernel", "host", "-k", "unregister-merge", "--memory", "anon", "--lava"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = [(m["id"], m["result"]) for m in signals(done.stdout)]
    assert found == [("host.unregister-merge.anon", "pass"), ("host.expectations", "pass")]
