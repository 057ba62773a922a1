"""Host tool detection: names what is missing and the one apt-get line that installs it."""

import sys
from pathlib import Path

import pytest

from uffdharness.matrix import hosttools


def test_missing_tools_error_names_tools_and_install_command(monkeypatch):
    monkeypatch.setattr(hosttools, "find_busybox", lambda candidates=(): None)
    problems = hosttools.check(which=lambda name: None)
    error = hosttools.MissingHostTools(problems)
    text = str(error)
    for command in ("qemu-system-x86_64", "busybox", "apt-get", "dpkg-deb", "depmod"):
        assert command in text
    assert (
        error.install_command == "apt-get install -y apt busybox-static dpkg kmod qemu-system-x86"
    )
    assert text.endswith(error.install_command)


def test_dynamic_busybox_is_reported_as_such(monkeypatch):
    monkeypatch.setattr(hosttools, "find_busybox", lambda candidates=(): None)
    problems = hosttools.check(hosttools.BOOT_TOOLS, which=lambda name: f"/usr/bin/{name}")
    assert [(p.tool.command, p.reason) for p in problems] == [
        ("busybox", "dynamically linked: /usr/bin/busybox")
    ]


def test_nothing_missing_means_no_problems():
    assert hosttools.check(hosttools.FETCH_TOOLS, which=lambda name: "/x") == []


def test_static_elf_detection(tmp_path: Path):
    assert not hosttools.is_static_elf(Path(sys.executable).resolve())  # has PT_INTERP
    (tmp_path / "text").write_text("#!/bin/sh\n")
    assert not hosttools.is_static_elf(tmp_path / "text")


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="busybox not installed")
def test_installed_busybox_is_recognised():
    found = hosttools.find_busybox()
    assert found is None or hosttools.is_static_elf(found)
