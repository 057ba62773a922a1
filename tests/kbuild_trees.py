"""Small real source trees for the kbuild tests: a kernel tree's top-level layout with a few
files of text, and unified diffs against them. Building a kernel is far too slow for a
unit test; spec parsing, patching, the farm and the cache keys need only files."""

from __future__ import annotations

import subprocess
from pathlib import Path

FUNCTION = [f"line {n}" for n in range(1, 41)]


def make_tree(root: Path) -> Path:
    """A directory that looks like a kernel tree (specs.TREE_MARKERS) with fs/uffd.c."""
    (root / "arch" / "x86").mkdir(parents=True)
    (root / "scripts" / "kconfig").mkdir(parents=True)
    (root / "fs").mkdir()
    (root / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 1\n")
    (root / "Kconfig").write_text('mainmenu "test"\n')
    (root / "arch" / "x86" / "Kconfig").write_text("config 64BIT\n\tbool\n")
    (root / "fs" / "uffd.c").write_text("\n".join(FUNCTION) + "\n")
    (root / "fs" / "other.c").write_text("int other;\n")
    (root / "include").mkdir()
    (root / "include" / "link.h").symlink_to("../fs/other.c")
    return root


def hunk(start: int, old: str, new: str) -> str:
    """A one-line change at line ``start`` (1-based) of FUNCTION, with 3 lines of context."""
    before = FUNCTION[start - 4 : start - 1]
    after = FUNCTION[start : start + 3]
    body = [f" {line}" for line in before] + [f"-{old}", f"+{new}"] + [f" {x}" for x in after]
    return f"@@ -{start - 3},7 +{start - 3},7 @@ static int f(void)\n" + "\n".join(body) + "\n"


def write_patch(path: Path, *hunks: str, preamble: str = "", target: str = "fs/uffd.c") -> Path:
    path.write_text(f"{preamble}--- a/{target}\n+++ b/{target}\n" + "".join(hunks))
    return path


def git(tree: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout
