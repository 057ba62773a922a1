"""Exit statuses as kselftest runners read them (KSFT_PASS 0, KSFT_FAIL 1, KSFT_SKIP 4), from
runner.exit_status, for `run`, `matrix` (and its merge) and `stress`: real runs on this kernel."""

from __future__ import annotations

import json

import pytest
from test_cli_info import run_cli, run_main_in_child

from uffdharness import cli, runner, stress, system
from uffdharness.abi import Feature
from uffdharness.runner import EXIT_FAIL, EXIT_PASS, EXIT_SKIP, Result
from uffdharness.scenarios.model import Observation, Scenario

RWP_ON_ANON = ("-k", "rwp-*", "--memory", "anon")  # every pair skips before 7.3


def _results(*verdicts: str) -> list[Result]:
    return [Result(f"scenario-{index}", "anon", verdict) for index, verdict in enumerate(verdicts)]


@pytest.mark.parametrize(
    ("verdicts", "status"),
    [
        (("pass",), EXIT_PASS),
        (("known-bug",), EXIT_PASS),
        (("skip", "pass", "skip"), EXIT_PASS),
        (("skip", "known-bug"), EXIT_PASS),
        (("skip",), EXIT_SKIP),
        (("skip", "skip"), EXIT_SKIP),
        ((), EXIT_SKIP),  # nothing checked: nothing passed
        (("pass", "fail"), EXIT_FAIL),
        (("skip", "error"), EXIT_FAIL),
        (("skip", "skip", "hang"), EXIT_FAIL),
    ],
)
def test_exit_status_of_verdicts(verdicts, status):
    assert runner.exit_status(_results(*verdicts)) == status


def _require_no_rwp() -> None:
    offered = Feature(system.facts().uffd.features_mask or 0)
    if offered & Feature.RWP:
        pytest.skip("this kernel offers UFFD_FEATURE_RWP (7.3), so the rwp-* pairs run")


def _verdicts(path) -> list[str]:
    return [result["verdict"] for result in json.loads(path.read_text())["results"]]


@pytest.mark.timeout(120)
def test_run_exits_0_when_something_passed(tmp_path):
    report = tmp_path / "run.json"
    done = run_cli("run", "-k", "api-probe", "--quiet", "--json", str(report))
    assert done.returncode == EXIT_PASS, done.stdout + done.stderr
    assert _verdicts(report) == ["pass"]


@pytest.mark.timeout(120)
def test_run_exits_4_when_every_pair_skipped(tmp_path):
    _require_no_rwp()
    report = tmp_path / "run.json"
    done = run_cli("run", *RWP_ON_ANON, "--quiet", "--json", str(report))
    assert done.returncode == EXIT_SKIP, done.stdout + done.stderr
    verdicts = _verdicts(report)
    assert len(verdicts) > 1 and set(verdicts) == {"skip"}


def _add_a_scenario_that_fails() -> None:
    from uffdharness.scenarios import CATALOGUE

    def three_vmas(ctx) -> Observation:
        return Observation({"vmas": 3}, False, "vmas=3", "3 VMAs where 2 were expected")

    CATALOGUE["exit-status-fails"] = Scenario(
        id="exit-status-fails",
        title="fails on purpose",
        checks="the exit status",
        run=three_vmas,
        memory=("anon",),
    )


def test_run_exits_1_on_a_fail(tmp_path):
    """The real CLI and runner (a forked child per pair, judged) with one scenario added that
    fails, next to one that passes: no kernel here shows a bug to fail on."""
    report = tmp_path / "run.json"
    argv = ["run", "-k", "exit-status-fails,api-probe", "--quiet", "--json", str(report)]
    status, table = run_main_in_child(argv, _add_a_scenario_that_fails)
    assert status == EXIT_FAIL, table
    assert sorted(_verdicts(report)) == ["fail", "pass"]


def test_run_exits_2_when_nothing_is_selected():
    done = run_cli("run", "-k", "no-such-scenario")
    assert done.returncode == 2 and "no scenario matches" in done.stderr


@pytest.mark.timeout(180)
def test_matrix_and_merge_exit_4_only_when_every_kernel_skipped_everything(tmp_path):
    """The host kernel's run in the matrix exits 4 (which the matrix reads as a report, not
    as a broken run); merged with a run that passed, the status is 0."""
    _require_no_rwp()
    skipped, passed = tmp_path / "skipped.json", tmp_path / "passed.json"
    done = run_cli("matrix", "--kernel", "host", *RWP_ON_ANON, "--quiet", "--json", str(skipped))
    assert done.returncode == EXIT_SKIP, done.stdout + done.stderr
    (section,) = json.loads(skipped.read_text())["kernels"]
    assert section["guest"]["exit_code"] == EXIT_SKIP
    assert {result["verdict"] for result in section["results"]} == {"skip"}
    assert json.loads(skipped.read_text())["summary"]["ok"] is True

    done = run_cli(
        "matrix", "--kernel", "host", "-k", "api-probe", "--quiet", "--json", str(passed)
    )
    assert done.returncode == EXIT_PASS, done.stdout + done.stderr

    merged = run_cli("matrix", "merge", str(skipped))
    assert merged.returncode == EXIT_SKIP, merged.stdout + merged.stderr
    merged = run_cli("matrix", "merge", str(skipped), str(passed))
    assert merged.returncode == EXIT_PASS, merged.stdout + merged.stderr


def test_stress_exits_4_when_every_kind_skipped(monkeypatch, capsys):
    monkeypatch.setattr(stress, "skip_reason", lambda config, facts: "not on this machine")
    status = cli.main(["stress", "--memory", "anon", "--memory", "shmem", "--mib", "1"])
    assert status == EXIT_SKIP
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["skip", "skip"]


def test_stress_exits_0_when_one_kind_ran(monkeypatch, capsys):
    def only_anon(config, facts):
        return None if config.memory == "anon" else "not on this machine"

    monkeypatch.setattr(stress, "skip_reason", only_anon)
    argv = ["stress", "--memory", "anon", "--memory", "shmem", "--mib", "1", "--bounces", "2"]
    assert cli.main(argv) == EXIT_PASS
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["pass", "skip"]
