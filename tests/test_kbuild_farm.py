"""The hard-link farm a build reads: kept in step with the source and the patches, with the
mtimes make needs (a restored or changed file is newer than the objects built before)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from kbuild_trees import hunk, make_tree, write_patch

from uffdharness.matrix.kbuild import farm, patches

pytestmark = pytest.mark.skipif(shutil.which("patch") is None, reason="needs GNU patch")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "linux")


@pytest.fixture
def built(tree: Path, tmp_path: Path) -> farm.Farm:
    return farm.Farm(tree, tmp_path / "build" / "farm")


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def _after_a_build() -> int:
    """The time objects built now would carry; later writes must be newer."""
    time.sleep(0.01)
    return time.time_ns()


def test_a_new_farm_links_every_file(tree, built):
    report = built.sync(())
    assert report.linked == 6 and report.copied == 0  # 5 files and a symlink
    for name in ("Makefile", "fs/uffd.c", "fs/other.c", "arch/x86/Kconfig"):
        assert (built.root / name).stat().st_ino == (tree / name).stat().st_ino


def test_dropping_a_patch_restores_the_file_with_a_fresh_mtime(tree, tmp_path, built):
    patch = patches.parse(write_patch(tmp_path / "p", hunk(10, "line 10", "LINE 10")))
    built.sync((patch,))
    objects_built = _after_a_build()
    report = built.sync(())
    restored = built.root / "fs" / "uffd.c"
    assert restored.read_text() == (tree / "fs" / "uffd.c").read_text()
    # a relinked file would carry the source's old mtime, older than the objects
    assert _mtime(restored) > objects_built
    assert report.copied == 1
    assert _mtime(built.root / "fs" / "other.c") == _mtime(tree / "fs" / "other.c")


def test_the_same_patch_set_is_not_applied_again(tree, tmp_path, built):
    patch = patches.parse(write_patch(tmp_path / "p", hunk(10, "line 10", "LINE 10")))
    built.sync((patch,))
    patched = built.root / "fs" / "uffd.c"
    mtime = _mtime(patched)
    report = built.sync((patch,))
    assert not report.reapplied and _mtime(patched) == mtime


def test_another_patch_set_rewrites_only_what_it_and_the_last_touch(tree, tmp_path, built):
    first = patches.parse(write_patch(tmp_path / "1", hunk(10, "line 10", "LINE 10")))
    other = patches.parse(
        write_patch(
            tmp_path / "2", "@@ -1 +1 @@\n-int other;\n+int changed;\n", target="fs/other.c"
        )
    )
    built.sync((first,))
    makefile_mtime = _mtime(built.root / "Makefile")
    objects_built = _after_a_build()
    built.sync((other,))
    assert "LINE" not in (built.root / "fs" / "uffd.c").read_text()
    assert _mtime(built.root / "fs" / "uffd.c") > objects_built
    assert (built.root / "fs" / "other.c").read_text() == "int changed;\n"
    assert _mtime(built.root / "Makefile") == makefile_mtime


def test_a_source_edit_reaches_the_farm(tree, built):
    built.sync(())
    objects_built = _after_a_build()
    # as an editor or git checkout does it: a new file renamed over the old one
    replacement = tree / "fs" / ".uffd.c.new"
    replacement.write_text("edited\n")
    os.utime(replacement, ns=(0, 0))  # even with an mtime older than the objects
    os.replace(replacement, tree / "fs" / "uffd.c")
    (tree / "fs" / "added.c").write_text("new\n")
    (tree / "fs" / "other.c").unlink()
    report = built.sync(())
    assert (built.root / "fs" / "uffd.c").read_text() == "edited\n"
    assert _mtime(built.root / "fs" / "uffd.c") > objects_built
    assert (built.root / "fs" / "added.c").read_text() == "new\n"
    assert not (built.root / "fs" / "other.c").exists()
    assert (report.copied, report.removed) == (2, 1)
    assert built.sync(()).copied == 0  # and the copies count as current afterwards


def test_a_file_a_patch_creates_goes_with_the_patch(tree, tmp_path, built):
    creating = patches.parse(
        write_patch(tmp_path / "new", "@@ -0,0 +1 @@\n+created\n", target="fs/created.c")
    )
    built.sync((creating,))
    assert (built.root / "fs" / "created.c").read_text() == "created\n"
    assert built.sync(()).removed == 1
    assert not (built.root / "fs" / "created.c").exists()


def test_a_half_applied_patch_set_is_undone_next_time(tree, tmp_path, built):
    good = patches.parse(write_patch(tmp_path / "good", hunk(10, "line 10", "LINE 10")))
    bad = patches.parse(write_patch(tmp_path / "bad", hunk(30, "line 99", "x")))
    with pytest.raises(patches.PatchError):
        built.sync((good, bad))
    built.sync(())
    assert (built.root / "fs" / "uffd.c").read_text() == (tree / "fs" / "uffd.c").read_text()


def test_files_mrproper_removed_stay_out(tree, built):
    (tree / ".config").write_text("CONFIG_X=y\n")  # an in-tree configure ran there
    built.sync(())
    (built.root / ".config").unlink()  # what mrproper does in the farm
    assert built.exclude_missing() == 1
    built.sync(())
    assert not (built.root / ".config").exists() and (tree / ".config").exists()
