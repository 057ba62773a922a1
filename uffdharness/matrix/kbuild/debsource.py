"""Debian's kernel source (``linux-source-X.Y``), downloaded and unpacked into the cache.

The package holds one tarball, usr/src/linux-source-X.Y.tar.xz: the full tree with
Debian's patches applied. It comes through the matrix's private apt setup (privateapt), is
unpacked once (~20 s) into ``sources/debian/<package>_<version>/tree`` and never changed
afterwards: builds patch a hard-link farm of it. A complete entry has source.json; without
apt (offline, no mirror) the newest cached entry of the series is used.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from debian.debian_support import Version

from .. import debindex, hosttools
from ..aptmirror import host_mirror
from ..cachedir import locked, write_atomic
from ..privateapt import AptError, PrivateApt
from .build import SourceTree
from .identity import package_identity
from .specs import SourceSpec

Log = Callable[[str], None]


class SourceFetchError(RuntimeError):
    pass


def _entry_name(package: str, version: str) -> str:
    return f"{package}_{version.replace(':', '%3a')}"


def _tree(entry: Path, meta: dict) -> SourceTree:
    return SourceTree(
        path=entry / "tree",
        identity=package_identity(meta["package"], meta["version"]),
        location=f"debian:{meta['package']}={meta['version']}",
        label=f"{meta['package']} {meta['version']}",
        package_version=meta["version"],
    )


def _cached(cache: Path, package: str) -> list[tuple[Path, dict]]:
    found = []
    for meta_path in (cache / "sources" / "debian").glob(f"{package}_*/source.json"):
        try:
            found.append((meta_path.parent, json.loads(meta_path.read_text())))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda item: Version(item[1]["version"]))


def _choose(spec: SourceSpec, records: list[debindex.PackageRecord]) -> debindex.PackageRecord:
    matching = [
        r for r in records if r.name == spec.package and (not spec.value or r.version == spec.value)
    ]
    if not matching:
        known = ", ".join(sorted({r.version for r in records if r.name == spec.package})) or "none"
        raise SourceFetchError(
            f"{spec.text}: no {spec.package} package"
            + (f" version {spec.value}" if spec.value else "")
            + f" in the reachable suites (versions: {known})"
        )
    return max(matching, key=lambda r: Version(r.version))


def cached(spec: SourceSpec, cache: Path) -> SourceTree | None:
    """The newest complete cached tree ``spec`` names (that version, or of its series),
    without asking apt; None when nothing is cached."""
    found = [
        item
        for item in _cached(cache, spec.package)
        if not spec.value or item[1]["version"] == spec.value
    ]
    return _tree(*found[-1]) if found else None


def fetch(spec: SourceSpec, cache: Path, max_list_age_s: float, log: Log) -> SourceTree:
    """The unpacked tree of the package ``spec`` names, downloading it if needed."""
    cached = _cached(cache, spec.package)
    if spec.value:
        exact = [item for item in cached if item[1]["version"] == spec.value]
        if exact:
            return _tree(*exact[-1])
    apt = PrivateApt(cache / "apt", host_mirror())
    try:
        hosttools.require(hosttools.FETCH_TOOLS)
        with locked(cache / "locks" / "apt.lock"):
            report = apt.update(max_list_age_s)
            if report.ran:
                log(f"apt-get update ({apt.mirror.archive}): {'ok' if report.ok else 'FAILED'}")
            records = debindex.parse_records(apt.show([spec.package]))
    except (hosttools.MissingHostTools, AptError, OSError, subprocess.SubprocessError) as exc:
        fallback = [item for item in cached if not spec.value or item[1]["version"] == spec.value]
        if not fallback:
            if isinstance(exc, hosttools.MissingHostTools):
                raise
            raise SourceFetchError(f"{spec.text}: {exc}") from exc
        log(f"{spec.text}: apt unavailable ({exc}); using cached {fallback[-1][1]['version']}")
        return _tree(*fallback[-1])
    chosen = _choose(spec, records)
    entry = cache / "sources" / "debian" / _entry_name(chosen.name, chosen.version)
    with locked(cache / "locks" / f"source-{entry.name}.lock"):
        if not (entry / "source.json").is_file():
            _unpack(apt, chosen, entry, log)
    return _tree(entry, json.loads((entry / "source.json").read_text()))


def _unpack(apt: PrivateApt, record: debindex.PackageRecord, entry: Path, log: Log) -> None:
    shutil.rmtree(entry, ignore_errors=True)
    work = entry / "work"
    started = time.monotonic()
    log(f"downloading {record.name}={record.version} ({record.size / 1e6:.0f} MB)")
    apt.download([(record.name, record.version)], work)
    download_s = time.monotonic() - started
    debs = sorted(work.glob("*.deb"))
    if len(debs) != 1:
        raise SourceFetchError(f"apt-get download left {len(debs)} .deb files in {work}")
    started = time.monotonic()
    extracted = work / "x"
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(extracted)], check=True)
    tarballs = sorted((extracted / "usr" / "src").glob("linux-source-*.tar.*"))
    if not tarballs:
        raise SourceFetchError(f"{debs[0].name} holds no usr/src/linux-source-*.tar.*")
    unpacked = work / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", str(tarballs[0]), "-C", str(unpacked)], check=True)
    tops = [p for p in unpacked.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise SourceFetchError(f"{tarballs[0].name} does not hold one top directory")
    tops[0].rename(entry / "tree")
    shutil.rmtree(work)
    meta = {
        "package": record.name,
        "version": record.version,
        "download_bytes": record.size,
        "download_s": round(download_s, 1),
        "unpack_s": round(time.monotonic() - started, 1),
        "mirror": apt.mirror.archive,
    }
    log(
        f"{record.name} {record.version}: downloaded in {meta['download_s']} s, "
        f"unpacked in {meta['unpack_s']} s"
    )
    write_atomic(entry / "source.json", json.dumps(meta, indent=2).encode())
