"""Bad numbers and unwritable report paths are one-line usage errors (exit 2) before any
scenario runs or any guest boots."""

from __future__ import annotations

import pytest

from uffdharness.cli import main


def _usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: ")
    return err[-1]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e400", "-inf", "3601", "ten"])
def test_run_timeout_must_be_finite_positive_and_bounded(value, capsys):
    message = _usage_error(["run", "-k", "api-probe", f"--timeout={value}"], capsys)
    assert "--timeout" in message and value in message


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--guest-timeout", "-5"),
        ("--guest-timeout", "nan"),
        ("--timeout", "0"),
        ("--jobs", "many"),
        ("--guest-memory", "1"),
    ],
)
def test_matrix_numbers_are_checked_by_the_parser(option, value, capsys):
    message = _usage_error(["matrix", "--kernel", "host", f"{option}={value}"], capsys)
    assert option in message and value in message


@pytest.mark.parametrize("command", [["run", "-k", "api-probe"], ["matrix", "--kernel", "host"]])
@pytest.mark.parametrize("option", ["--json", "--junit"])
def test_unwritable_report_path_is_refused_before_running(command, option, tmp_path, capsys):
    missing_dir = tmp_path / "absent" / "report.out"
    message = _usage_error([*command, option, str(missing_dir)], capsys)
    assert message.endswith(f"{option}: {missing_dir.parent} does not exist")
    message = _usage_error([*command, option, str(tmp_path)], capsys)
    assert message.endswith(f"{option}: {tmp_path} is a directory")
    assert capsys.readouterr().out == ""  # nothing ran


def test_no_match_echoes_the_pattern(capsys):
    assert main(["run", "-k", "no-such-scenario", "--memory", "anon"]) == 2
    assert capsys.readouterr().err == (
        "uffdharness run: no scenario matches -k 'no-such-scenario' on memory anon\n"
    )


def test_matrix_jobs_has_an_upper_bound(capsys):
    assert main(["matrix", "--kernel", "host", "--jobs", "65"]) == 2
    assert capsys.readouterr().err == "uffdharness matrix: --jobs must be at most 64\n"
