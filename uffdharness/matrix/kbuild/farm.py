"""A hard-link farm of a source tree: a copy that costs no space and may be patched.

The build reads the farm, never the source. Every file of the farm is a hard link to the
source's file, except the ones we made ourselves (patched, restored or changed in the
source since), which are real files. GNU patch replaces a file by writing a new one and
renaming it, so patching the farm leaves the source's inode untouched.

make decides what to rebuild by mtimes, so the farm is kept in step with the source and
the patches *incrementally* (``sync``), and every file that differs from what the last
build read gets a fresh mtime:
- a file a previous patch set changed, which this one does not, is restored by copying
  the source's file (a new inode, mtime now); relinking it would bring back an mtime older
  than the objects built from the patched version, and make would keep those;
- a file that changed in the source (a new inode after ``git checkout``, or a new size or
  mtime) is copied likewise;
- a patch set equal to the last one, on unchanged files, is not applied again.
A link of an unchanged file keeps its mtime, so a one-file patch rebuilds one file's
objects. Paths the farm must not hold (an in-tree build's leftovers that ``mrproper``
removed) are remembered as excluded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import patches

Stat = tuple[int, int, int]  # (inode, mtime_ns, size) of a source file


@dataclass
class Manifest:
    source: str = ""
    copies: dict[str, Stat] = field(default_factory=dict)  # our own files: the source stat
    applied_digest: str = ""  # the patch set now in the farm ("" for none)
    applied_sources: dict[str, Stat | None] = field(default_factory=dict)  # patched paths
    excluded: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return cls(
            data["source"],
            {k: tuple(v) for k, v in data["copies"].items()},  # type: ignore[misc]
            data["applied_digest"],
            {k: (tuple(v) if v else None) for k, v in data["applied_sources"].items()},  # type: ignore[misc]
            list(data["excluded"]),
        )

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.__dict__))
        os.replace(tmp, path)


@dataclass(frozen=True)
class SyncReport:
    linked: int  # new links (a new farm: every file)
    copied: int  # files given a fresh copy (restored, or changed in the source)
    removed: int  # farm files the source no longer has (or a patch created)
    patched: tuple[str, ...]  # files the patches changed this time
    reapplied: bool  # False when the same patch set was already in place


def patch_set_digest(patch_list: Iterable[patches.Patch]) -> str:
    digests = [p.digest for p in patch_list]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest() if digests else ""


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _key(stat: os.stat_result) -> Stat:
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _walk(root: Path, skip: frozenset[str]) -> Iterator[str]:
    """Relative paths of every non-directory under ``root``, .git and ``skip`` left out."""
    for directory, subdirs, files in os.walk(root):
        relative_dir = os.path.relpath(directory, root)
        if relative_dir == ".":
            subdirs[:] = [d for d in subdirs if d != ".git"]
            relative_dir = ""
        for name in files + [d for d in subdirs if os.path.islink(os.path.join(directory, d))]:
            relative = os.path.join(relative_dir, name) if relative_dir else name
            if relative not in skip:
                yield relative


class Farm:
    def __init__(self, source: Path, root: Path) -> None:
        self.source = source
        self.root = root
        self.manifest_path = root.parent / f"{root.name}.json"

    def _fresh_copy(self, relative: str) -> None:
        """Replace the farm's file by a new copy of the source's (a new inode, mtime now)."""
        src, dst = self.source / relative, self.root / relative
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.farm-tmp")
        if src.is_symlink():
            tmp.unlink(missing_ok=True)
            os.symlink(os.readlink(src), tmp)
        else:
            shutil.copyfile(src, tmp)
            shutil.copymode(src, tmp)
        os.replace(tmp, dst)

    def _link(self, relative: str) -> bool:
        """A hard link of the source's file; False when the farm's entry has an inode of its
        own (a symlink is made anew; another file system gets a copy)."""
        src, dst = self.source / relative, self.root / relative
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
            return False
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                shutil.copy2(src, dst)  # a new farm: no objects yet, the mtime may be old
                return False
            raise
        return True

    def sync(self, patch_list: tuple[patches.Patch, ...], log: Path | None = None) -> SyncReport:
        """Bring the farm to: the source as it is now, plus ``patch_list`` applied in order.

        PatchError when a patch does not apply; the manifest then records its files as
        patched, so the next sync restores them."""
        previous = Manifest.load(self.manifest_path)
        fresh = previous is None or previous.source != str(self.source) or not self.root.is_dir()
        if fresh:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True)
            previous = Manifest(str(self.source))
        assert previous is not None
        manifest = Manifest(str(self.source), excluded=list(previous.excluded))
        excluded = frozenset(previous.excluded)
        digest = patch_set_digest(patch_list)
        touched = frozenset().union(*(p.touched for p in patch_list)) if patch_list else frozenset()
        # The patch set in place can stay when it is this one and no file it patched has
        # changed in the source since.
        keep_applied = (
            bool(digest)
            and digest == previous.applied_digest
            and all(
                _current(self.source / path) == stat
                for path, stat in previous.applied_sources.items()
            )
        )
        restore = set() if keep_applied else set(previous.applied_sources)
        linked = copied = removed = 0
        seen: set[str] = set()
        for relative in _walk(self.source, excluded):
            seen.add(relative)
            source_stat = os.lstat(self.source / relative)
            farm_stat = _stat(self.root / relative)
            if keep_applied and relative in previous.applied_sources:
                continue
            if relative in restore:
                pass  # patched last time: a fresh copy below
            elif fresh:
                if not self._link(relative):
                    manifest.copies[relative] = _key(source_stat)
                linked += 1
                continue
            elif farm_stat is not None and (farm_stat.st_ino, farm_stat.st_dev) == (
                source_stat.st_ino,
                source_stat.st_dev,
            ):
                continue
            elif farm_stat is not None and previous.copies.get(relative) == _key(source_stat):
                manifest.copies[relative] = _key(source_stat)
                continue
            self._fresh_copy(relative)
            manifest.copies[relative] = _key(source_stat)
            copied += 1
        if not fresh:
            for relative in list(_walk(self.root, excluded)):
                if relative not in seen and not (
                    keep_applied and relative in previous.applied_sources
                ):
                    (self.root / relative).unlink()
                    manifest.copies.pop(relative, None)
                    removed += 1
        if keep_applied:
            manifest.applied_digest = digest
            manifest.applied_sources = dict(previous.applied_sources)
            manifest.save(self.manifest_path)
            return SyncReport(linked, copied, removed, tuple(sorted(touched)), reapplied=False)
        # Recorded before patching: a patch that fails half-way leaves files to restore.
        manifest.applied_sources = {path: _current(self.source / path) for path in touched}
        manifest.applied_digest = digest if not patch_list else "incomplete"
        manifest.save(self.manifest_path)
        for patch in patch_list:
            patches.apply(patch, self.root, log)
        manifest.applied_digest = digest
        manifest.save(self.manifest_path)
        return SyncReport(
            linked, copied, removed, tuple(sorted(touched)), reapplied=bool(patch_list)
        )

    def exclude_missing(self) -> int:
        """Remember every source file the farm lacks now (``mrproper`` removed them) as
        excluded; how many there are."""
        manifest = Manifest.load(self.manifest_path) or Manifest(str(self.source))
        excluded = set(manifest.excluded)
        for relative in _walk(self.source, frozenset(excluded)):
            if not os.path.lexists(self.root / relative):
                excluded.add(relative)
                manifest.copies.pop(relative, None)
        manifest.excluded = sorted(excluded)
        manifest.save(self.manifest_path)
        return len(manifest.excluded)


def _current(path: Path) -> Stat | None:
    stat = _stat(path)
    return _key(stat) if stat is not None else None
