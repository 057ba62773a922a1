"""Turn a kernel SPEC into a bootable KernelImage, fetching Debian kernels into a local cache.

Cache layout under cachedir.cache_root():
    apt/                         private apt setup (privateapt.PrivateApt)
    debian/<release>_<version>/  root/ (dpkg-deb -x of the packages, depmod run),
                                 vmlinux (when worth having), kernel.json (metadata)
    local/<sha256 prefix>/       artefacts for a kernel given by path
    sources/, kbuild/, built/    kernels built from source (src:, debian-src:; kbuild.build)
    locks/                       flock files, one per cache entry
A complete entry is one with a readable kernel.json naming files that exist; everything
else (a download cut short, a truncated .deb, a damaged kernel.json) is removed and rebuilt
under the entry's lock. A package that still cannot be unpacked is a one-line
KernelFetchError naming it, and leaves no half-built entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian.debian_support import Version

from . import bzimage, debindex, hosttools
from .aptmirror import host_mirror
from .cachedir import cache_root, locked, write_atomic
from .children import CHILDREN
from .kernelspec import KernelSpec, SpecKind, parse
from .privateapt import DEFAULT_MAX_AGE_S, AptError, PrivateApt

Log = Callable[[str], None]


def _stderr_log(message: str) -> None:
    print(f"uffdharness matrix: {message}", file=sys.stderr)


@dataclass(frozen=True)
class KernelImage:
    spec: str
    release: str  # what `uname -r` prints in the guest
    kernel: Path | None  # bzImage or ELF as found; None for the host kernel
    vmlinux: Path | None  # uncompressed ELF with a PVH entry, when one was made
    modules_dir: Path | None  # .../lib/modules/<release> with modules.dep
    package_version: str | None  # Debian package version
    cache_dir: Path | None  # where per-kernel artefacts (initramfs) are kept
    # Upstream fixes a patched kernel declares it carries (kbuild.patches): judged as fixed
    # whatever its version.
    carried_fixes: tuple[str, ...] = ()
    build: dict[str, Any] | None = None  # how a kernel built from source was made

    @property
    def is_host(self) -> bool:
        return self.kernel is None

    def boot_image(self, prefer_vmlinux: bool = True) -> Path:
        if self.kernel is None:
            raise ValueError("the host kernel is not booted in qemu")
        return self.vmlinux if (prefer_vmlinux and self.vmlinux) else self.kernel


class KernelFetchError(RuntimeError):
    pass


def resolve(
    spec: str | KernelSpec,
    *,
    cache: Path | None = None,
    max_list_age_s: float = DEFAULT_MAX_AGE_S,
    log: Log = _stderr_log,
) -> KernelImage:
    """A KernelImage for `spec`, downloading and preparing a Debian kernel if needed."""
    spec = parse(spec) if isinstance(spec, str) else spec
    cache = cache or cache_root()
    if spec.kind is SpecKind.HOST:
        release = os.uname().release
        modules = Path("/lib/modules") / release
        return KernelImage(
            spec.text, release, None, None, modules if modules.is_dir() else None, None, None
        )
    if spec.kind is SpecKind.PATH:
        return _local_kernel(spec, cache)
    if spec.kind in (SpecKind.SOURCE, SpecKind.DEBIAN_SOURCE):
        from .kbuild.resolve import built_kernel

        return built_kernel(spec, cache, max_list_age_s, log)  # type: ignore[arg-type]
    return _debian_kernel(spec, cache, max_list_age_s, log)


# --- kernels given by path -------------------------------------------------------------


def _local_kernel(spec: KernelSpec, cache: Path) -> KernelImage:
    assert spec.kernel_path is not None
    kernel = spec.kernel_path.resolve()
    if not kernel.is_file():
        raise KernelFetchError(f"{spec.text}: no kernel image at {kernel}")
    release = bzimage.release_of(kernel)
    modules_dir = spec.modules_dir
    if modules_dir is None:
        for candidate in (
            kernel.parent.parent / "lib" / "modules" / release,
            Path("/lib/modules") / release,
        ):
            if (candidate / "modules.dep").is_file():
                modules_dir = candidate
                break
    elif not (modules_dir / "modules.dep").is_file():
        raise KernelFetchError(f"{modules_dir} has no modules.dep; run: depmod -b <root> {release}")
    digest = hashlib.sha256(kernel.read_bytes()).hexdigest()[:16]
    entry = cache / "local" / digest
    with locked(cache / "locks" / f"local-{digest}.lock"):
        entry.mkdir(parents=True, exist_ok=True)
        vmlinux = _make_vmlinux(kernel, entry)
    return KernelImage(spec.text, release, kernel, vmlinux, modules_dir, None, entry)


def _make_vmlinux(kernel: Path, entry: Path) -> Path | None:
    """An uncompressed, PVH-bootable copy of `kernel` in `entry` (made once), else None.

    Booting it skips the in-guest decompression, which is slow under TCG.
    """
    target = entry / "vmlinux"
    marker = entry / "vmlinux.unavailable"
    if target.is_file():
        return target
    if marker.is_file():
        return None
    data = kernel.read_bytes()
    if data[:4] == bzimage.ELF_MAGIC:
        return kernel if bzimage.has_pvh_entry(data) else None
    try:
        elf = bzimage.extract_vmlinux(data)
    except (ValueError, RuntimeError) as exc:
        marker.write_text(f"{exc}\n")
        return None
    if not bzimage.has_pvh_entry(elf):
        marker.write_text("no PVH entry note (CONFIG_PVH is off)\n")
        return None
    write_atomic(target, elf)
    return target


# --- Debian kernels --------------------------------------------------------------------


# kernel.json fields every reader relies on
META_FIELDS = ("release", "version", "image_package", "kernel", "modules_dir")


def _read_meta(entry: Path) -> dict | None:
    """The entry's kernel.json when it is whole and names files that exist, else None."""
    try:
        meta = json.loads((entry / "kernel.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in META_FIELDS):
        return None
    if not (entry / meta["kernel"]).is_file() or not (entry / meta["modules_dir"]).is_dir():
        return None
    return meta | {"dir": str(entry)}


def _entries(cache: Path) -> list[dict]:
    found = []
    for meta_file in sorted((cache / "debian").glob("*/kernel.json")):
        meta = _read_meta(meta_file.parent)
        if meta is not None:
            found.append(meta)
    return found


def _cached_match(spec: KernelSpec, cache: Path) -> dict | None:
    """A complete cache entry for an exact spec (version or package), needing no apt at all."""
    for meta in _entries(cache):
        if spec.kind is SpecKind.DEBIAN_VERSION and meta["version"] == spec.value:
            return meta
        if spec.kind is SpecKind.DEBIAN_PACKAGE and meta["image_package"] == spec.value:
            return meta
    return None


def _newest_cached(spec: KernelSpec, cache: Path) -> dict | None:
    """Offline fallback for an alias: the newest cached kernel it would have matched."""
    records = [debindex.PackageRecord(m["image_package"], m["version"]) for m in _entries(cache)]
    try:
        chosen = debindex.select(spec, records)
    except LookupError:
        return None
    return next(
        m
        for m in _entries(cache)
        if m["version"] == chosen.version and m["image_package"] == chosen.name
    )


def _image_from_meta(spec: KernelSpec, meta: dict) -> KernelImage:
    entry = Path(meta["dir"])
    vmlinux = entry / "vmlinux"
    return KernelImage(
        spec.text,
        meta["release"],
        entry / meta["kernel"],
        vmlinux if vmlinux.is_file() else None,
        entry / meta["modules_dir"],
        meta["version"],
        entry,
    )


def _lookup(
    spec: KernelSpec, apt: PrivateApt, max_list_age_s: float, log: Log
) -> debindex.KernelPackages:
    report = apt.update(max_list_age_s)
    if report.ran:
        log(f"apt-get update ({apt.mirror.archive}): {'ok' if report.ok else 'FAILED'}")
    for problem in report.problems:
        log(f"apt: {problem}")
    return debindex.packages_for(debindex.select(spec, _kernel_records(apt)))


def _kernel_records(apt: PrivateApt) -> list[debindex.PackageRecord]:
    """Every generic linux-image record in the lists, memoised until the next apt update.

    apt-cache takes ~2.5 s per call over ten suites' lists; the memo makes a warm run cheap.
    """
    memo = apt.root / "kernel-records.json"
    stamp = apt.stamp.stat().st_mtime_ns if apt.stamp.is_file() else None
    try:
        saved = json.loads(memo.read_text())
        if stamp is not None and saved["stamp"] == stamp:
            return [
                debindex.PackageRecord(r["name"], r["version"], tuple(r["depends"]), r["size"])
                for r in saved["records"]
            ]
    except (OSError, ValueError, KeyError):
        pass
    names = [n for n in apt.search_names(debindex.IMAGE_NAME_REGEX) if debindex.is_generic_image(n)]
    records = debindex.parse_records(apt.show(names))
    if stamp is not None:
        write_atomic(
            memo,
            json.dumps(
                {
                    "stamp": stamp,
                    "records": [
                        {
                            "name": r.name,
                            "version": r.version,
                            "depends": list(r.depends),
                            "size": r.size,
                        }
                        for r in records
                    ],
                }
            ).encode(),
        )
    return records


def _debian_kernel(spec: KernelSpec, cache: Path, max_list_age_s: float, log: Log) -> KernelImage:
    meta = _cached_match(spec, cache)
    if meta:
        return _image_from_meta(spec, meta)
    apt = PrivateApt(cache / "apt", host_mirror())
    try:
        hosttools.require(hosttools.FETCH_TOOLS)
        with locked(cache / "locks" / "apt.lock"):
            packages = _lookup(spec, apt, max_list_age_s, log)
    except (hosttools.MissingHostTools, AptError, OSError, subprocess.SubprocessError) as exc:
        fallback = _newest_cached(spec, cache)
        if fallback is None:
            if isinstance(exc, hosttools.MissingHostTools):
                raise
            raise KernelFetchError(f"{spec.text}: {exc}") from exc
        log(f"{spec.text}: apt unavailable ({exc}); using cached {fallback['version']}")
        return _image_from_meta(spec, fallback)
    except LookupError as exc:
        raise KernelFetchError(str(exc)) from exc
    key = f"{packages.release}_{packages.image.version}"
    entry = cache / "debian" / key
    with locked(cache / "locks" / f"debian-{key}.lock"):
        meta = _read_meta(entry)
        if meta is None:
            _prepare_debian_entry(packages, apt, entry, log)
            meta = _read_meta(entry)
    if meta is None:
        raise KernelFetchError(f"{spec.text}: {entry} is incomplete after preparing it")
    return _image_from_meta(spec, meta)


def _find_kernel(root: Path, release: str) -> Path:
    for candidate in (
        root / "boot" / f"vmlinuz-{release}",
        root / "usr" / "lib" / "modules" / release / "vmlinuz",
        root / "lib" / "modules" / release / "vmlinuz",
    ):
        if candidate.is_file():
            return candidate
    raise KernelFetchError(f"no vmlinuz for {release} in the extracted packages")


def _prepare_debian_entry(
    packages: debindex.KernelPackages, apt: PrivateApt, entry: Path, log: Log
) -> None:
    """Download, unpack and depmod one kernel into ``entry``; on any failure (a stop
    request included) remove what was made, so the next run starts clean."""
    shutil.rmtree(entry, ignore_errors=True)
    try:
        _fill_debian_entry(packages, apt, entry, log)
    except BaseException:
        shutil.rmtree(entry, ignore_errors=True)
        raise


def _helper(argv: list[str], what: str) -> None:
    """Run dpkg-deb or depmod; KernelFetchError with the tool's last line if it fails."""
    proc = CHILDREN.run(argv)
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise KernelFetchError(f"{what} failed: {said}")


def _fill_debian_entry(
    packages: debindex.KernelPackages, apt: PrivateApt, entry: Path, log: Log
) -> None:
    release = packages.release
    downloads = entry / "downloads"
    root = entry / "root"
    started = time.monotonic()
    log(f"downloading {', '.join(f'{n}={v}' for n, v in packages.downloads)}")
    apt.download(list(packages.downloads), downloads)
    debs = sorted(downloads.glob("*.deb"))
    if not debs:
        raise KernelFetchError(f"apt-get download left no .deb in {downloads}")
    download_s = time.monotonic() - started
    download_bytes = sum(deb.stat().st_size for deb in debs)
    started = time.monotonic()
    root.mkdir(parents=True)
    for deb in debs:
        # a truncated or corrupt package fails here: "dpkg-deb -x linux-image-...deb failed:
        # dpkg-deb: error: unexpected end of file in archive member header ..."
        _helper(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
    if not (root / "lib").exists() and (root / "usr" / "lib" / "modules").is_dir():
        # Merged-/usr packages (7.x): depmod -b looks in <root>/lib/modules.
        (root / "lib").symlink_to("usr/lib")
    modules_dir = root / "lib" / "modules" / release
    # The packages ship no modules.dep; apt's postinst would run depmod on install.
    _helper(["depmod", "-b", str(root), release], f"depmod {release}")
    kernel = _find_kernel(root, release)
    vmlinux = _make_vmlinux(kernel, entry)
    shutil.rmtree(downloads)
    meta = {
        "release": release,
        "version": packages.image.version,
        "image_package": packages.image.name,
        "downloaded": [f"{n}={v}" for n, v in packages.downloads],
        "split_layout": packages.split_layout,
        "kernel": str(kernel.relative_to(entry)),
        "modules_dir": str(modules_dir.relative_to(entry)),
        "compression": bzimage.payload_compression(kernel.read_bytes()),
        "vmlinux": vmlinux is not None,
        "download_bytes": download_bytes,
        "download_s": round(download_s, 2),
        "prepare_s": round(time.monotonic() - started, 2),
        "mirror": apt.mirror.archive,
    }
    log(
        f"{release}: {download_bytes / 1e6:.0f} MB in {download_s:.1f} s, "
        f"prepared in {meta['prepare_s']} s"
    )
    write_atomic(entry / "kernel.json", json.dumps(meta, indent=2).encode())


def cached_kernels(cache: Path | None = None) -> list[KernelImage]:
    """Every complete Debian kernel in the cache, oldest version first."""
    metas = sorted(_entries(cache or cache_root()), key=lambda m: Version(m["version"]))
    return [_image_from_meta(parse(f"debian:{m['version']}"), m) for m in metas]
