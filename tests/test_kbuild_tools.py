"""Building a kernel needs host tools; a missing one is named with the apt-get line, before
any download or build."""

from __future__ import annotations

from kbuild_trees import make_tree

from uffdharness import cli
from uffdharness.matrix import hosttools
from uffdharness.matrix import runner as matrix_runner


def test_every_build_tool_is_named_with_its_package(tmp_path):
    problems = hosttools.check(
        hosttools.BUILD_TOOLS, which=lambda name: None, header_dirs=[str(tmp_path)]
    )
    error = hosttools.MissingHostTools(problems)
    for needed in ("gcc", "make", "flex", "bison", "bc", "cpio", "patch", "gelf.h"):
        assert f"  {needed} (" in str(error)
    assert error.install_command == (
        "apt-get install -y bc binutils bison cpio flex gcc libelf-dev libssl-dev make patch "
        "perl xz-utils"
    )


def test_a_library_is_found_by_its_header(tmp_path):
    (tmp_path / "openssl").mkdir()
    (tmp_path / "openssl" / "ssl.h").write_text("")
    problems = hosttools.check(
        hosttools.BUILD_TOOLS, which=lambda name: f"/usr/bin/{name}", header_dirs=[str(tmp_path)]
    )
    assert [(p.tool.package, p.reason) for p in problems] == [("libelf-dev", "header not found")]


def test_a_source_spec_needs_the_build_tools_before_anything_runs(monkeypatch, tmp_path, capsys):
    tree = make_tree(tmp_path / "linux")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # nothing on it: qemu, gcc, make ... all missing
    assert cli.main(["matrix", "--kernel", f"src:{tree}"]) == 2
    err = capsys.readouterr().err
    assert "flex (flex): not found" in err and "make (make): not found" in err
    assert err.rstrip().splitlines()[-1].startswith("  apt-get install -y ")
    assert "bison" in err.rstrip().splitlines()[-1]
    matrix_runner.require_tools(["host"])  # the host alone needs nothing
