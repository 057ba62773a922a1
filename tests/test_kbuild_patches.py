"""Patch application on a small real tree with GNU patch: the source is never written, and a
patch that does not apply names the hunk that failed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kbuild_trees import hunk, make_tree, write_patch

from uffdharness.matrix.kbuild import farm, patches

pytestmark = pytest.mark.skipif(shutil.which("patch") is None, reason="needs GNU patch")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "linux")


def _farm(tree: Path, tmp_path: Path) -> farm.Farm:
    return farm.Farm(tree, tmp_path / "build" / "farm")


def test_a_patch_changes_the_farm_and_never_the_source(tree, tmp_path):
    source_file = tree / "fs" / "uffd.c"
    before = (source_file.read_bytes(), source_file.stat().st_ino, source_file.stat().st_mtime_ns)
    patch = patches.parse(write_patch(tmp_path / "p", hunk(10, "line 10", "LINE 10")))
    built = _farm(tree, tmp_path)
    built.sync((patch,))
    assert "LINE 10" in (built.root / "fs" / "uffd.c").read_text()
    assert (
        source_file.read_bytes(),
        source_file.stat().st_ino,
        source_file.stat().st_mtime_ns,
    ) == (before)
    # every file the patch did not touch is the source's own inode
    other = (tree / "fs" / "other.c").stat().st_ino
    assert (built.root / "fs" / "other.c").stat().st_ino == other
    assert (built.root / "include" / "link.h").is_symlink()


def test_a_failing_hunk_is_named_with_its_header(tree, tmp_path):
    good, bad = hunk(10, "line 10", "LINE 10"), hunk(30, "line 99", "LINE 30")
    patch = patches.parse(write_patch(tmp_path / "fix.patch", good, bad))
    with pytest.raises(patches.PatchError) as failure:
        _farm(tree, tmp_path).sync((patch,))
    assert str(failure.value) == (
        "patch fix.patch does not apply: fs/uffd.c hunk #2 "
        "(@@ -27,7 +27,7 @@ static int f(void)) FAILED at line 27"
    )
    assert (tree / "fs" / "uffd.c").read_text().count("LINE") == 0


def test_a_reversed_patch_and_a_missing_file_are_named(tree, tmp_path):
    applied = patches.parse(write_patch(tmp_path / "once", hunk(10, "line 10", "LINE 10")))
    reverse = patches.parse(write_patch(tmp_path / "twice", hunk(10, "LINE 10", "line 10")))
    built = _farm(tree, tmp_path)
    with pytest.raises(patches.PatchError, match="fs/uffd.c: reversed or already applied"):
        built.sync((reverse,))
    elsewhere = patches.parse(
        write_patch(tmp_path / "gone", hunk(10, "line 10", "x"), target="fs/missing.c")
    )
    with pytest.raises(patches.PatchError, match=r"no file to patch \(.*fs/missing.c\)"):
        built.sync((applied, elsewhere))


def test_preamble_declares_fixes_and_the_diff_names_files(tmp_path):
    text = (
        "Subject: [PATCH] a backport\n\nCarries-fix: mm/uffd: one\ncarries-fix:  mm: two \n\n"
        "diff --git a/fs/a.c b/fs/a.c\n--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1 +1 @@\n-a\n+b\n"
        "diff --git a/fs/new.c b/fs/new.c\nnew file mode 100644\n--- /dev/null\n+++ b/fs/new.c\n"
        "@@ -0,0 +1 @@\n+new\n"
        # a line in a hunk that looks like a header is still the hunk's
        "diff --git a/fs/b.c b/fs/b.c\n--- a/fs/b.c\n+++ b/fs/b.c\n@@ -1,2 +1,2 @@\n"
        " Carries-fix: not a declaration\n-x\n+y\n"
    )
    patch = patches.parse(write_text(tmp_path / "p", text))
    assert patch.carries_fixes == ("mm/uffd: one", "mm: two")
    assert patch.touched == {"fs/a.c", "fs/new.c", "fs/b.c"}
    assert [(f.old, f.new, len(f.hunks)) for f in patch.files] == [
        ("fs/a.c", "fs/a.c", 1),
        (None, "fs/new.c", 1),
        ("fs/b.c", "fs/b.c", 1),
    ]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
