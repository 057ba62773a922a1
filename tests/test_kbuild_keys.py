"""Cache keys of a build: what the source holds (git HEAD + dirty state, or file stats), the
patches' content, the fragment and the toolchain; and which of them pick the build dir."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from kbuild_trees import git, hunk, make_tree, write_patch

from uffdharness.matrix.kbuild import identity, options, patches
from uffdharness.matrix.kbuild.build import BuildRequest, SourceTree, toolchain_id

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    tree = make_tree(tmp_path / "linux")
    (tree / ".gitignore").write_text("*.o\n")
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "base")
    return tree


@needs_git
def test_git_identity_is_head_plus_the_dirty_state(checkout):
    head = git(checkout, "rev-parse", "HEAD").strip()
    clean = identity.tree_identity(checkout)
    assert (clean.kind, clean.text, clean.dirty) == ("git", f"git {head}", False)
    (checkout / "fs" / "built.o").write_text("ignored build output\n")
    assert identity.tree_identity(checkout) == clean
    (checkout / "fs" / "uffd.c").write_text("edited\n")
    edited = identity.tree_identity(checkout)
    assert edited.dirty and edited.text.startswith(f"git {head}+dirty.")
    (checkout / "fs" / "uffd.c").write_text("edited again\n")
    assert identity.tree_identity(checkout) != edited
    git(checkout, "checkout", "-q", "--", "fs/uffd.c")
    assert identity.tree_identity(checkout) == clean
    (checkout / "fs" / "new.c").write_text("untracked\n")
    untracked = identity.tree_identity(checkout)
    assert untracked.dirty and untracked != edited


@needs_git
def test_git_identity_does_not_write_the_users_repository(checkout):
    index = checkout / ".git" / "index"
    # Stat-dirty, content clean: plain `git diff HEAD` would refresh the index and write it.
    later = (checkout / "fs" / "uffd.c").stat().st_mtime_ns + 5_000_000_000
    os.utime(checkout / "fs" / "uffd.c", ns=(later, later))
    before = (index.read_bytes(), index.stat().st_mtime_ns)
    identity.tree_identity(checkout)
    assert (index.read_bytes(), index.stat().st_mtime_ns) == before


def test_a_tree_without_git_is_known_by_its_file_stats(tmp_path):
    tree = make_tree(tmp_path / "linux")
    first = identity.tree_identity(tree)
    assert first.kind == "files" and first == identity.tree_identity(tree)
    os.utime(tree / "fs" / "other.c", ns=(1, 1))
    assert identity.tree_identity(tree) != first


def _request(tmp_path: Path, ident: str, patch_text: str | None = None, **extra) -> BuildRequest:
    source = SourceTree(
        tmp_path, identity.SourceIdentity("git", ident), location="/src/linux", label="linux"
    )
    patch_list = ()
    if patch_text is not None:
        patch_list = (patches.parse(write_patch(tmp_path / "fix.patch", patch_text)),)
    return BuildRequest(source, patch_list, extra.get("config", {}), jobs=2)


def test_build_keys(tmp_path):
    tools = "gcc (Debian 12.2.0-14) 12.2.0; GNU ld 2.40"
    base = _request(tmp_path, "git aaaa")
    patched = _request(tmp_path, "git aaaa", hunk(10, "line 10", "LINE 10"))
    repatched = _request(tmp_path, "git aaaa", hunk(10, "line 10", "Line 10"))  # same file name
    moved = _request(tmp_path, "git bbbb")
    configured = _request(tmp_path, "git aaaa", config={"KALLSYMS": "y"})
    keys = {r.build_key(tools) for r in (base, patched, repatched, moved, configured)}
    assert len(keys) == 5
    assert base.build_key(tools) != base.build_key("gcc 13; GNU ld 2.41")
    assert base.build_key(tools) == _request(tmp_path, "git aaaa").build_key(tools)
    # one build directory for every state of the source and every patch set
    assert base.base_key(tools) == patched.base_key(tools) == moved.base_key(tools)
    assert configured.base_key(tools) != base.base_key(tools)
    assert base.base_key(tools) != base.base_key("gcc 13; GNU ld 2.41")


def test_comments_in_the_fragment_are_not_part_of_the_key(tmp_path, monkeypatch):
    tools = "gcc 12; ld 2.40"
    request = _request(tmp_path, "git aaaa")
    key = request.base_key(tools)
    original = options.fragment()
    reworded = original.replace("# userfaultfd(2)", "# the userfaultfd(2) syscall")
    assert reworded != original
    monkeypatch.setattr(options, "fragment", lambda: reworded)
    assert request.base_key(tools) == key
    monkeypatch.setattr(options, "fragment", lambda: reworded + "CONFIG_KALLSYMS=y\n")
    assert request.base_key(tools) != key


def test_toolchain_id_names_compiler_and_linker():
    if shutil.which("gcc") is None or shutil.which("ld") is None:
        pytest.skip("needs gcc and ld")
    gcc, ld = toolchain_id().split("; ")
    assert gcc.startswith("gcc") and "ld" in ld
