"""What a source tree holds, as one string for cache keys: the same string, the same sources.

- a git checkout: HEAD, plus a digest of the diff against HEAD and of every untracked,
  not ignored file when the tree is dirty ("git 1a2b3c4d5e6f+dirty.0f1e2d3c");
- any other tree (an unpacked tarball): a digest of every file's path, size and mtime;
- a Debian source package unpacked by us: the package and version.

The user's tree is only read: plumbing commands under --no-optional-locks, so not even the
index's stat cache is refreshed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


class IdentityError(RuntimeError):
    pass


@dataclass(frozen=True)
class SourceIdentity:
    kind: str  # "git", "files", "debian"
    text: str  # "git 1a2b..+dirty.0f1e", "files 1234abcd", "linux-source-6.1=6.1.192-3"
    dirty: bool = False

    def __str__(self) -> str:
        return self.text


def _git(tree: Path, *args: str) -> bytes:
    proc = subprocess.run(
        ["git", "-c", f"safe.directory={tree}", "--no-optional-locks", "-C", str(tree), *args],
        capture_output=True,
        check=False,
        env=dict(os.environ, LC_ALL="C", GIT_OPTIONAL_LOCKS="0"),
    )
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip()
        raise IdentityError(f"git {' '.join(args[:2])} in {tree}: {message}")
    return proc.stdout


def is_git_checkout(tree: Path) -> bool:
    return (tree / ".git").exists()


def git_identity(tree: Path) -> SourceIdentity:
    head = _git(tree, "rev-parse", "HEAD").decode().strip()
    digest = hashlib.sha256()
    # diff-index, not diff: porcelain `git diff` refreshes the index's stat cache and
    # writes it back even under --no-optional-locks (git 2.39).
    diff = _git(tree, "diff-index", "--binary", "-p", "HEAD")
    digest.update(diff)
    untracked = [
        name
        for name in _git(tree, "ls-files", "-z", "--others", "--exclude-standard").split(b"\0")
        if name
    ]
    for name in sorted(untracked):
        digest.update(b"\0untracked\0" + name + b"\0")
        path = tree / os.fsdecode(name)
        if path.is_file() and not path.is_symlink():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    dirty = bool(diff or untracked)
    text = f"git {head}" + (f"+dirty.{digest.hexdigest()[:16]}" if dirty else "")
    return SourceIdentity("git", text, dirty)


def files_identity(tree: Path) -> SourceIdentity:
    """Path, size and mtime of every file (not their content: a 1.5 GB tree would take
    seconds to hash, and an edit changes the mtime)."""
    digest = hashlib.sha256()
    for directory, subdirs, files in os.walk(tree):
        subdirs.sort()
        if Path(directory) == tree:
            subdirs[:] = [d for d in subdirs if d != ".git"]
        for name in sorted(files):
            path = os.path.join(directory, name)
            stat = os.lstat(path)
            digest.update(
                f"{os.path.relpath(path, tree)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return SourceIdentity("files", f"files {digest.hexdigest()[:24]}")


def tree_identity(tree: Path) -> SourceIdentity:
    return git_identity(tree) if is_git_checkout(tree) else files_identity(tree)


def package_identity(package: str, version: str) -> SourceIdentity:
    return SourceIdentity("debian", f"{package}={version}")
