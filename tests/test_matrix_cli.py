"""`uffdharness matrix` end to end: argument handling, missing host tools, the host kernel
run as a subprocess, and (when Debian kernels are cached and qemu exists) real guests."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import junitparser
import pytest
from test_cli_info import modules_after_building_the_parser, run_cli

from uffdharness import cli
from uffdharness.matrix import guest, hosttools, kernels, merge, report
from uffdharness.matrix import runner as matrix_runner
from uffdharness.matrix.cachedir import cache_root

# --- arguments and host tools ------------------------------------------------------------


def test_cli_default_guest_timeout_is_the_runners():
    from uffdharness.cli import build_parser

    parser = build_parser()
    for argv in (["matrix", "--kernel", "host"], ["mutations"], ["bisect-step", "-k", "move"]):
        assert parser.parse_args(argv).guest_timeout == matrix_runner.DEFAULT_GUEST_TIMEOUT


def test_building_the_cli_does_not_import_the_matrix_package():
    # every guest builds the parser; the matrix package (qemu, apt, cpio) is dead weight
    # there: only its import-free defaults (DEFAULT_GUEST_TIMEOUT) may come along
    loaded = modules_after_building_the_parser()
    matrix_modules = sorted(name for name in loaded if name.startswith("uffdharness.matrix"))
    assert matrix_modules == ["uffdharness.matrix", "uffdharness.matrix.defaults"]


def test_kernel_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["matrix"])
    assert exit_info.value.code == 2
    assert "--kernel" in capsys.readouterr().err


def test_bad_spec_is_named_before_anything_runs(capsys):
    assert cli.main(["matrix", "--kernel", "host", "--kernel", "fedora:41"]) == 2
    assert "unknown kernel spec 'fedora:41'" in capsys.readouterr().err


def test_jobs_must_be_positive(capsys):
    assert cli.main(["matrix", "--kernel", "host", "--jobs", "0"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


def test_matrix_merge_is_the_merge_module(tmp_path, capsys):
    one_kernel = tmp_path / "debian_6.1.json"
    report.write_json(str(one_kernel), [matrix_runner.failed_run("debian:6.1", "hang", "slow")])
    by_command, by_module = tmp_path / "command.json", tmp_path / "module.json"
    rc = cli.main(["matrix", "merge", str(one_kernel), "--json", str(by_command)])
    table = capsys.readouterr().out
    assert rc == merge.main([str(one_kernel), "--json", str(by_module)]) == 1  # a hang row
    assert capsys.readouterr().out == table
    assert "(guest run)" in table
    assert json.loads(by_command.read_text()) == json.loads(by_module.read_text())


def test_matrix_merge_refuses_the_options_of_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["matrix", "--kernel", "host", "--jobs", "2", "merge", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert (
        "not an option of merge, but of a matrix run: --kernel, --jobs" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["matrix", "merge"])
    assert exit_info.value.code == 2
    assert "FILE" in capsys.readouterr().err


def test_missing_host_tools_give_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-system-x86_64 on it
    monkeypatch.setattr(hosttools, "find_busybox", lambda candidates=(): None)
    resolved = []
    monkeypatch.setattr(kernels, "resolve", lambda spec, **kw: resolved.append(spec))
    assert cli.main(["matrix", "--kernel", "debian:6.1", "--kernel", "host"]) == 2
    err = capsys.readouterr().err
    assert "qemu-system-x86_64 (qemu-system-x86): not found" in err
    assert "busybox (busybox-static): not found" in err
    assert err.rstrip().endswith("apt-get install -y busybox-static qemu-system-x86")
    assert resolved == []  # nothing was fetched or booted


def test_host_only_needs_no_qemu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(hosttools, "find_busybox", lambda candidates=(): None)
    matrix_runner.require_tools(["host"])  # does not raise


def test_python_under_tmp_is_refused_for_guests(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/tmp/venv/bin/python")
    with pytest.raises(matrix_runner.MatrixError, match="lives under /tmp"):
        matrix_runner.guest_python()


@pytest.fixture
def guests_see_this_python():
    """A run with guest kernels refuses an interpreter the guests cannot see (under /tmp)."""
    try:
        matrix_runner.guest_python()
    except matrix_runner.MatrixError as exc:
        pytest.skip(str(exc))


def test_a_kernel_that_cannot_be_prepared_is_an_error_row_and_the_rest_run(
    monkeypatch, tmp_path, capsys, guests_see_this_python
):
    monkeypatch.setattr(matrix_runner, "require_tools", lambda specs: None)
    monkeypatch.setattr(matrix_runner, "precompile", lambda: None)
    missing = tmp_path / "bzImage"
    out_json = tmp_path / "m.json"
    rc = cli.main(
        [
            "matrix",
            "--kernel",
            str(missing),
            "--kernel",
            "host",
            "-k",
            "api-probe",
            "--json",
            str(out_json),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert f"{missing}: cannot prepare the kernel" in captured.err
    document = json.loads(out_json.read_text())
    broken, host = document["kernels"]
    assert [r["verdict"] for r in broken["results"]] == ["error"]
    assert "no kernel image at" in broken["results"][0]["reason"]
    assert [(r["id"], r["verdict"]) for r in host["results"]] == [("api-probe", "pass")]
    assert document["summary"]["guest_failures"] == 1


def test_an_unexpected_failure_preparing_one_kernel_spares_the_others(
    monkeypatch, guests_see_this_python
):
    real_resolve = kernels.resolve

    def resolve(spec, **kwargs):
        if spec == "debian:6.1":
            raise subprocess.CalledProcessError(1, ["depmod", "-b", "/x", "6.1.0-56-amd64"])
        return real_resolve(spec, **kwargs)

    monkeypatch.setattr(kernels, "resolve", resolve)
    monkeypatch.setattr(matrix_runner, "precompile", lambda: None)
    lines = []
    runs = matrix_runner.run_matrix(
        ["debian:6.1", "host"], matrix_runner.MatrixOptions(pattern="api-probe"), lines.append
    )
    assert [r.verdict for r in runs[0].results] == ["error"]
    assert "CalledProcessError" in runs[0].results[0].reason
    assert [r.verdict for r in runs[1].results] == ["pass"]
    assert any(str(line).startswith("debian:6.1: cannot prepare the kernel") for line in lines)


# --- the host kernel, end to end ---------------------------------------------------------


@pytest.mark.timeout(120)
def test_matrix_on_the_host_kernel_end_to_end(tmp_path):
    out_json, out_xml = tmp_path / "m.json", tmp_path / "m.xml"
    done = run_cli(
        "matrix",
        "--kernel",
        "host",
        "-k",
        "unregister-merge",
        "--json",
        str(out_json),
        "--junit",
        str(out_xml),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["host"]
    assert lines[1].split() == ["scenario[memory]", str(_host_version())]
    assert lines[2].split() == ["unregister-merge[anon]", "pass"]
    assert "matrix: host: running on the host kernel" in done.stderr
    document = json.loads(out_json.read_text())
    (section,) = document["kernels"]
    assert section["spec"] == "host" and section["guest"]["accel"] == "host"
    assert section["kernel"]["release"] == os.uname().release
    results = {r["memory"]: r for r in section["results"]}
    assert results["anon"]["facts"]["vmas_after_unregister"] == 2
    assert (
        results["hugetlb"]["facts"]["vmas_after_unregister"] == 3
        or results["hugetlb"]["verdict"] == "skip"
    )
    assert section["expectations"]["violations"] == []
    assert section["expectations"]["checked"] >= 3
    (suite,) = junitparser.JUnitXml.fromfile(str(out_xml))
    assert suite.name == "host" and suite.failures == 0 and suite.errors == 0
    assert suite.tests == len(section["results"]) + 1  # + the expectations case


def _host_version():
    from uffdharness.system import kernel_version

    return kernel_version()


# --- real guests: only with qemu and cached Debian kernels --------------------------------


def _cached_spec(series: str) -> str:
    problems = hosttools.check(hosttools.BOOT_TOOLS)
    if problems:
        pytest.skip(str(hosttools.MissingHostTools(problems)))
    try:
        matrix_runner.guest_python()
    except matrix_runner.MatrixError as exc:
        pytest.skip(str(exc))
    for image in reversed(kernels.cached_kernels()):
        if image.package_version and image.package_version.startswith(f"{series}."):
            return f"debian:{image.package_version}"
    pytest.skip(
        f"no Debian {series} kernel cached in {cache_root()} "
        f"(uffdharness matrix --kernel debian:{series} downloads one)"
    )


@pytest.mark.timeout(300)
def test_guests_in_parallel_show_the_merge_bug_on_6_1_and_the_fix_on_6_12(tmp_path):
    old, new = _cached_spec("6.1"), _cached_spec("6.12")
    out_json = tmp_path / "m.json"
    done = run_cli(
        "matrix",
        "--kernel",
        old,
        "--kernel",
        new,
        "-k",
        "unregister-merge",
        "--memory",
        "anon",
        "--jobs",
        "2",
        "--json",
        str(out_json),
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[2].split() == ["unregister-merge[anon]", "known", "pass"]
    document = json.loads(out_json.read_text())
    verdicts = {
        k["spec"]: (k["results"][0]["verdict"], k["results"][0]["facts"]["vmas_after_unregister"])
        for k in document["kernels"]
    }
    assert verdicts == {old: ("known-bug", 3), new: ("pass", 2)}
    for section in document["kernels"]:
        assert section["guest"]["status"] == "ok" and section["guest"]["boot_s"] > 0
        assert section["kernel"]["release"] == section["release"]


@pytest.mark.timeout(120)
def test_a_guest_that_outlives_its_timeout_is_a_hang_row_with_the_console(tmp_path):
    spec = _cached_spec("6.12")
    out_json = tmp_path / "m.json"
    done = run_cli(
        "matrix",
        "--kernel",
        spec,
        "-k",
        "api-probe",
        "--guest-timeout",
        "2",
        "--json",
        str(out_json),
        timeout=100,
    )
    assert done.returncode == 1
    assert "(guest run)" in done.stdout and "HANG" in done.stdout
    (section,) = json.loads(out_json.read_text())["kernels"]
    (row,) = section["results"]
    assert (row["id"], row["verdict"]) == ("guest", "hang")
    assert row["reason"].startswith("killed after 2 s")
    assert section["guest"]["status"] == "hang"
    assert "console_tail" in section["guest"]


@pytest.mark.timeout(120)
def test_too_little_guest_memory_puts_qemus_reason_in_the_table():
    # the parser refuses --guest-memory below 256; the runner below it gets what qemu says
    spec = _cached_spec("6.1")
    options = matrix_runner.MatrixOptions(pattern="api-probe", memory_mb=1, guest_timeout=60)
    (run,) = matrix_runner.run_matrix([spec], options)
    (row,) = run.results
    assert (row.id, row.verdict) == ("guest", "error")
    assert row.reason.startswith("qemu exited 1: qemu: initrd is too large, cannot support.")
    table = io.StringIO()
    report.print_table([run], table)
    assert f"{spec}: (guest run) error: qemu exited 1: qemu: initrd is too large" in (
        table.getvalue()
    )


def test_a_panic_before_the_job_boots_once_more_and_is_reported():
    """A kernel that panics before the job starts is booted a second time (TCG boots have
    panicked once in a while in text patching); a panic that repeats is the error, and both
    panics are in the guest record."""
    spec = _cached_spec("6.1")
    image = next(i for i in kernels.cached_kernels() if spec.endswith(i.package_version or "-"))
    config = guest.GuestConfig(extra_cmdline=("rdinit=/no-such-init", "root=/dev/none"))
    result = guest.run_in_guest(image, ["true"], 60, config=config)
    assert result.status == "error" and result.boot_s is None
    assert len(result.boot_panics) == guest.BOOT_PANIC_RETRIES == 1
    assert "Kernel panic" in result.boot_panics[0] and "Kernel panic" in result.detail


@pytest.mark.timeout(300)
def test_bench_runs_in_a_guest_and_prints_its_report(capsys):
    """bench --kernel boots the kernel and prints the guest's own report (how RWP is
    measured beside WP where the host lacks it)."""
    spec = _cached_spec("6.1")
    code = cli.main(
        [
            "bench",
            "--kernel",
            spec,
            "--json",
            "--reps",
            "1",
            "--pages",
            "32",
            "--workloads",
            "wp,rwp",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == (1 if data["missed"] else 0)
    assert {f["workload"] for f in data["figures"]} >= {"WP round trip anon-4K"}
    assert data["skipped"] == ["rwp: kernel lacks UFFD_FEATURE_RWP (added in 7.3)"]


@pytest.mark.timeout(600)
def test_rwp_scenarios_pass_on_debian_7_3():
    """Read-write protection (7.3) on every memory kind, in a guest of Debian's 7.3 (the
    host lacks it); api-probe names 7.3's bits. .ci/run checks the same after downloading."""
    spec = _cached_spec("7.3")
    options = matrix_runner.MatrixOptions(pattern="rwp-*,api-probe", guest_timeout=600)
    (run,) = matrix_runner.run_matrix([spec], options)
    verdicts = {(r.id, r.memory): r.verdict for r in run.results}
    # rwp-swap too: the guest swaps to zram
    assert {name: v for name, v in verdicts.items() if v != "pass"} == {}, [
        (r.name, r.reason) for r in run.results if r.verdict != "pass"
    ]
    assert not run.violations
