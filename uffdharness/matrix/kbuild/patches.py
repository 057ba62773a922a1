"""Patch files for a kernel build: what they touch, the fixes they declare, applying them.

A patch is a unified diff (``git format-patch`` or ``diff -u`` output, paths with one
leading component, as ``patch -p1`` takes them). Its preamble (the text before the first
diff) may declare the upstream fixes the patched kernel carries, one per line:

    Carries-fix: mm/uffd: allow vma to merge as much as possible

naming the fix by its upstream subject, as a scenario's known bug does (KnownBug.fix).
A kernel built with that patch is judged as carrying the fix whatever its version.

Applying uses GNU patch without fuzz (offsets are fine): a hunk whose context differs is a
failure, not a guess. patch writes each file it changes anew and renames it into place, so
in a hard-link farm the linked original is never written.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

CARRIES_FIX = re.compile(r"^Carries-fix:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_HUNK = re.compile(r"@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@.*")
_GIT_HEADER = re.compile(r"diff --git a/(\S+) b/(\S+)")
_FAILED = re.compile(r"Hunk #(\d+) FAILED at (\d+)")
_PATCHING = re.compile(r"(?:patching|checking) file (.+)")


class PatchError(RuntimeError):
    """A patch that is not a usable diff, or that does not apply."""


@dataclass(frozen=True)
class FilePatch:
    old: str | None  # path before, None for a new file
    new: str | None  # path after, None for a deleted file
    hunks: tuple[str, ...]  # the "@@ -a,b +c,d @@ context" lines, in order

    @property
    def path(self) -> str:
        return self.new or self.old or "?"


@dataclass(frozen=True)
class Patch:
    path: Path
    digest: str  # sha256 of the content
    files: tuple[FilePatch, ...]
    carries_fixes: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def touched(self) -> frozenset[str]:
        """Every path the patch may create, change, rename or delete."""
        return frozenset(p for f in self.files for p in (f.old, f.new) if p)


def _strip(path: str) -> str | None:
    """``a/fs/userfaultfd.c`` -> ``fs/userfaultfd.c`` (``patch -p1``); /dev/null -> None."""
    path = path.split("\t", 1)[0].strip()
    if path == "/dev/null":
        return None
    return path.split("/", 1)[1] if "/" in path else path


def parse(path: Path) -> Patch:
    """Read a patch file; PatchError unless it holds at least one file with one hunk."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PatchError(f"cannot read patch {path}: {exc.strerror}") from exc
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    files: list[FilePatch] = []
    preamble_end = len(lines)
    index = 0
    pending_git: tuple[str, str] | None = None
    while index < len(lines):
        line = lines[index]
        git = _GIT_HEADER.match(line)
        if git:
            preamble_end = min(preamble_end, index)
            pending_git = (git.group(1), git.group(2))
        elif (
            line.startswith("--- ")
            and index + 1 < len(lines)
            and lines[index + 1].startswith("+++ ")
        ):
            preamble_end = min(preamble_end, index)
            old, new = _strip(line[4:]), _strip(lines[index + 1][4:])
            index += 2
            hunks = []
            while index < len(lines) and not lines[index].startswith(("--- ", "diff ")):
                if _HUNK.match(lines[index]):
                    hunks.append(lines[index])
                index += 1
            files.append(FilePatch(old, new, tuple(hunks)))
            pending_git = None
            continue
        elif pending_git and line.startswith(("rename to ", "copy to ")):
            # a git rename or copy without content changes has no ---/+++ lines
            files.append(FilePatch(pending_git[0], pending_git[1], ()))
            pending_git = None
        index += 1
    if not any(f.hunks for f in files):
        raise PatchError(f"{path}: no unified diff hunks (expected '--- a/...', '+++ b/...', '@@')")
    preamble = "\n".join(lines[:preamble_end])
    fixes = tuple(dict.fromkeys(match.group(1) for match in CARRIES_FIX.finditer(preamble)))
    return Patch(path, hashlib.sha256(data).hexdigest(), tuple(files), fixes)


def _describe_failure(patch: Patch, output: str) -> str:
    """Name every hunk patch could not apply: file, number, its @@ line, where."""
    current = None
    failures = []
    for line in output.splitlines():
        patching = _PATCHING.match(line)
        if patching:
            current = patching.group(1).strip()
            continue
        failed = _FAILED.search(line)
        if failed:
            number, at = int(failed.group(1)), failed.group(2)
            header = ""
            for item in patch.files:
                if item.path == current and 0 < number <= len(item.hunks):
                    header = f" ({item.hunks[number - 1]})"
            failures.append(f"{current} hunk #{number}{header} FAILED at line {at}")
        elif "Reversed (or previously applied) patch detected" in line:
            failures.append(f"{current}: reversed or already applied")
        elif line.startswith("can't find file to patch"):
            wanted = next((f.path for f in patch.files if f.old), "?")
            failures.append(f"no file to patch (first file of the patch: {wanted})")
    if failures:
        return "; ".join(failures)
    last = output.strip().splitlines()[-1:] or ["no output"]
    return last[0]


def apply(patch: Patch, tree: Path, log: Path | None = None) -> str:
    """Apply ``patch`` to ``tree`` with GNU patch; its output, or PatchError naming the
    failed hunk. Rejects are discarded: the farm is restored before the next build."""
    proc = subprocess.run(
        [
            "patch",
            "-p1",
            "--forward",
            "--batch",
            "--fuzz=0",
            "--no-backup-if-mismatch",
            "--reject-file=-",
            "-d",
            str(tree),
            "-i",
            str(patch.path.resolve()),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, LC_ALL="C"),
    )
    output = proc.stdout + proc.stderr
    if log is not None:
        with open(log, "a") as out:
            out.write(f"$ patch -p1 < {patch.path}\n{output}")
    if proc.returncode != 0:
        raise PatchError(f"patch {patch.name} does not apply: {_describe_failure(patch, output)}")
    return output
