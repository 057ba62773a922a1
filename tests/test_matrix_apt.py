"""The private apt setup: mirror detection from the host's sources, generated config, reuse."""

import os
import subprocess
from pathlib import Path

import pytest

from uffdharness.matrix import aptmirror
from uffdharness.matrix.aptmirror import Mirror, SourceEntry
from uffdharness.matrix.privateapt import ARCHIVE_SUITES, SECURITY_SUITES, PrivateApt, sources_list

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
"""


@pytest.fixture
def etc_apt(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_deb822_source(etc_apt):
    (etc_apt / "sources.list.d" / "debian.sources").write_text(DEB822)
    mirror = aptmirror.choose_mirror(aptmirror.host_entries(etc_apt))
    assert mirror.archive == "http://mirror.example/debian"
    assert mirror.security == "http://mirror.example/debian-security"


def test_one_line_source_with_options_and_disabled_files(etc_apt):
    (etc_apt / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://proxy.local:3142/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
    )
    (etc_apt / "sources.list.d" / "other.list.disabled").write_text(
        "deb http://disabled.example/debian sid main\n"
    )
    mirror = aptmirror.choose_mirror(aptmirror.host_entries(etc_apt))
    assert mirror.archive == "http://proxy.local:3142/debian"
    assert mirror.security == aptmirror.DEFAULT_SECURITY


def test_non_debian_host_falls_back_to_deb_debian_org():
    entries = [SourceEntry("http://archive.ubuntu.com/ubuntu", "jammy")]
    mirror = aptmirror.choose_mirror(entries)
    assert (mirror.archive, mirror.security) == (
        aptmirror.DEFAULT_ARCHIVE,
        aptmirror.DEFAULT_SECURITY,
    )


def test_deb822_enabled_no_is_skipped():
    text = "Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: sid\n"
    assert aptmirror.parse_deb822(text) == []


def test_environment_override(monkeypatch):
    monkeypatch.setenv("UFFDHARNESS_DEBIAN_MIRROR", "http://local.mirror/debian/")
    assert aptmirror.host_mirror(Path("/nonexistent")).archive == "http://local.mirror/debian"


MIRROR = Mirror("http://mirror.example/debian", "http://mirror.example/debian-security", "test")


def test_sources_list_covers_every_suite_signed_by_the_keyring():
    text = sources_list(MIRROR, Path("/k.gpg"))
    lines = [line for line in text.splitlines() if line.startswith("deb ")]
    assert len(lines) == len(ARCHIVE_SUITES) + len(SECURITY_SUITES)
    assert all("signed-by=/k.gpg" in line and "trusted=yes" not in line for line in lines)
    assert "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bullseye main" in lines
    assert (
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian-security "
        "bookworm-security main"
    ) in lines


def _apt(tmp_path: Path) -> PrivateApt:
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    return PrivateApt(tmp_path / "apt", MIRROR, keyring)


def test_options_point_every_apt_directory_into_the_private_root(tmp_path):
    apt = _apt(tmp_path)
    options = dict(opt.split("=", 1) for opt in apt.options()[1::2])
    for key in (
        "Dir::Etc::sourcelist",
        "Dir::Etc::sourceparts",
        "Dir::Etc::preferences",
        "Dir::Etc::preferencesparts",
        "Dir::State",
        "Dir::State::lists",
        "Dir::State::status",
        "Dir::Cache",
        "Dir::Cache::archives",
    ):
        assert options[key].startswith(str(tmp_path / "apt")), key
    assert options["APT::Architectures"] == "amd64"
    assert all(arg == "-o" for arg in apt.options()[0::2])


def test_update_runs_once_then_trusts_fresh_lists(tmp_path, monkeypatch):
    apt = _apt(tmp_path)
    calls = []

    def fake_run(argv, cwd=None, timeout=300):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "W: something odd\n")

    monkeypatch.setattr(PrivateApt, "_run", staticmethod(fake_run))
    first = apt.update(max_age_s=3600)
    assert first.ran and first.ok and first.problems == ["W: something odd"]
    assert calls[0][0] == "apt-get" and calls[0][-1] == "update"
    assert (tmp_path / "apt" / "etc" / "sources.list").read_text() == sources_list(
        MIRROR, tmp_path / "keyring.gpg"
    )
    assert not apt.update(max_age_s=3600).ran
    assert len(calls) == 1
    os.utime(apt.stamp, (0, 0))  # lists from 1970: too old
    assert apt.update(max_age_s=3600).ran


def test_missing_keyring_is_explained(tmp_path):
    apt = PrivateApt(tmp_path / "apt", MIRROR, tmp_path / "absent.gpg")
    with pytest.raises(RuntimeError, match="apt-get install -y debian-archive-keyring"):
        apt.write_config()


def test_unverifiable_suite_is_reported_and_the_rest_still_counts(tmp_path, monkeypatch):
    apt = _apt(tmp_path)
    stderr = (
        "W: GPG error: http://m/debian bullseye InRelease: ... NO_PUBKEY 0E98404D386FA1D9\n"
        "E: The repository 'http://m/debian bullseye InRelease' is not signed.\n"
    )

    def fake_run(argv, cwd=None, timeout=300):
        lists = tmp_path / "apt" / "state" / "lists"
        (lists / "m_debian_dists_bookworm_main_binary-amd64_Packages.lz4").write_bytes(b"")
        return subprocess.CompletedProcess(argv, 100, "", stderr)

    monkeypatch.setattr(PrivateApt, "_run", staticmethod(fake_run))
    report = apt.update(max_age_s=3600)
    assert report.ran and not report.ok
    assert report.problems[1].startswith("E: The repository")
    assert "debian-archive-keyring" in report.problems[-1]
    assert apt.lists_age() is not None  # bookworm arrived: no update on the next run
