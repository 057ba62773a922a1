"""src: and debian-src: specs: parsed and checked (files read) before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from kbuild_trees import hunk, make_tree, write_patch

from uffdharness import cli
from uffdharness.matrix.kbuild.resolve import unknown_fixes
from uffdharness.matrix.kbuild.specs import SourceSpec
from uffdharness.matrix.kernelspec import SpecError, SpecKind, parse

FIX = "mm/uffd: allow vma to merge as much as possible"
REPO = Path(__file__).resolve().parent.parent
BACKPORT = REPO / "patches/backports/6.1-mm-uffd-allow-vma-to-merge-as-much-as-possible.patch"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "linux")


def test_src_spec_with_patches_in_order_and_a_fragment(tmp_path, tree):
    first = write_patch(tmp_path / "1.patch", hunk(10, "line 10", "LINE 10"))
    second = write_patch(
        tmp_path / "2.patch", hunk(30, "line 30", "LINE 30"), preamble=f"Carries-fix: {FIX}\n\n"
    )
    fragment = tmp_path / "extra.config"
    fragment.write_text("# mine\nCONFIG_KALLSYMS=y\n# CONFIG_SWAP is not set\n")
    spec = parse(f"src:{tree},patch={first},patch={second},config={fragment}")
    assert isinstance(spec, SourceSpec)
    assert spec.kind is SpecKind.SOURCE and spec.tree == tree
    assert [p.path for p in spec.patches] == [first, second]
    assert spec.carries_fixes == (FIX,)
    assert spec.extra_config == {"KALLSYMS": "y", "SWAP": "n"}


def test_debian_src_series_and_exact_version():
    series = parse("debian-src:6.1")
    assert (series.kind, series.series, series.value) == (SpecKind.DEBIAN_SOURCE, (6, 1), "")
    assert series.package == "linux-source-6.1"
    exact = parse("debian-src:6.1.192-3")
    assert (exact.series, exact.value, exact.package) == ((6, 1), "6.1.192-3", "linux-source-6.1")


def test_relative_paths_are_taken_from_the_working_directory(tmp_path, tree, monkeypatch):
    write_patch(tmp_path / "fix.patch", hunk(10, "line 10", "LINE 10"))
    monkeypatch.chdir(tmp_path)
    spec = parse("src:linux,patch=fix.patch")
    assert spec.tree == tree and spec.patches[0].path == tmp_path / "fix.patch"


def test_a_fix_no_scenario_names_is_noted():
    assert unknown_fixes((FIX, "mm: some other fix")) == ["mm: some other fix"]


def test_the_shipped_backport_declares_its_fix_and_touches_one_file():
    spec = parse(f"debian-src:6.1,patch={BACKPORT}")
    (patch,) = spec.patches
    assert spec.carries_fixes == (FIX,)
    assert patch.touched == {"fs/userfaultfd.c"}
    assert [h.split(" @@ ")[1] for h in patch.files[0].hunks] == [
        "static int userfaultfd_register(struct u",
        "static int userfaultfd_unregister(struct",
    ]


@pytest.mark.parametrize(
    ("make_text", "message"),
    [
        (lambda t, d: "src:", "needs the path"),
        (lambda t, d: f"src:{d}/nowhere", "is not a directory"),
        (lambda t, d: f"src:{d}", "is not a kernel tree (no Makefile"),
        (lambda t, d: f"src:{t},patch={d}/none.patch", "cannot read patch"),
        (lambda t, d: f"src:{t},patch={t}/Makefile", "no unified diff hunks"),
        (lambda t, d: f"src:{t},config={t}/Makefile", "not a CONFIG_NAME=value line"),
        (lambda t, d: f"src:{t},config={d}/none.config", "cannot read config fragment"),
        (lambda t, d: f"src:{t},initrd=x", "unknown option 'initrd'"),
        (lambda t, d: f"src:{t},patch=", "needs a value"),
        (lambda t, d: "debian-src:six", "expected debian-src:X.Y"),
        (lambda t, d: "debian-src:6", "expected debian-src:X.Y"),
    ],
)
def test_bad_source_specs_say_what_is_wrong(tmp_path, tree, make_text, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        parse(make_text(tree, tmp_path))


def test_matrix_refuses_a_bad_source_spec_in_one_line_before_any_work(tmp_path, tree, capsys):
    rc = cli.main(["matrix", "--kernel", "host", "--kernel", f"src:{tree},patch={tmp_path}/x"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "cannot read patch" in err
