"""Build a kernel: (source, patches, config fragment) -> a cached bzImage and vmlinux.

Cache layout under cachedir.cache_root():
    kbuild/<base key>/    one build directory per source location, fragment, compiler and
                          arch: farm/ (the patched hard-link farm, farm.json), obj/ (make
                          O=), build.log (the last build's), base.json; reused by every
                          build of that source, so a one-file patch rebuilds one file
    built/<build key>/    what a build produced: bzImage, vmlinux, config, build.log,
                          kernel.json (complete when present); keyed by the source's
                          identity, the patches' content, the fragment, the compiler
    locks/                one flock per build directory
The base is ``make tinyconfig`` plus the fragment (``options``, then the spec's
``config=`` files), ``make olddefconfig``, then a check that every option asked for is
set (``kconfig.check_config``). The same check runs after the build, since a patch may
change a Kconfig file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import bzimage
from ..cachedir import locked, write_atomic
from ..children import CHILDREN
from . import kconfig, options, patches
from .farm import Farm, patch_set_digest
from .identity import SourceIdentity

Log = Callable[[str], None]
BUILDER_VERSION = 1  # part of every key: bump when the way a kernel is built changes
ARCH = "x86_64"
PROGRESS_EVERY_S = 30.0
LOG_TAIL_LINES = 30
# kbuild's short output: "  CC      mm/memory.o", "  AS      arch/x86/...", "  HOSTCC  ..."
_COMPILED = re.compile(r"^\s+(?:CC|AS|HOSTCC|HOSTCXX|CC \[M\])\s+\S")
_ERROR = re.compile(r"(?:error:|\*\*\* |Error \d|undefined reference)")
# What kbuild's "source tree is not clean" check looks at (Makefile, outputmakefile).
UNCLEAN_MARKERS = (".config", "include/config", "arch/x86/include/generated")


class BuildError(RuntimeError):
    """A build that failed: patch, config or compile. ``log`` is where the whole story is."""

    def __init__(self, message: str, log: Path | None = None, tail: str = "") -> None:
        self.log = log
        self.tail = tail
        where = f" (log: {log})" if log else ""
        super().__init__(f"{message}{where}" + (f"\n{tail}" if tail else ""))


@dataclass(frozen=True)
class SourceTree:
    path: Path
    identity: SourceIdentity
    location: str  # what the build directory is keyed by: the tree's path, or the package
    label: str  # for messages: "/home/me/linux", "linux-source-6.1 6.1.192-3"
    package_version: str | None = None


@dataclass(frozen=True)
class BuildRequest:
    source: SourceTree
    patches: tuple[patches.Patch, ...] = ()
    extra_config: Mapping[str, str] = field(default_factory=dict)
    jobs: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))  # $(nproc)

    def fragment_text(self) -> str:
        """What is appended to tinyconfig's .config: the catalogue's fragment, then the
        spec's own options (a later assignment wins in Kconfig)."""
        text = options.fragment()
        if self.extra_config:
            text += "\n# --- from the spec's config= fragments\n"
            text += "".join(
                f"# CONFIG_{name} is not set\n" if value == "n" else f"CONFIG_{name}={value}\n"
                for name, value in self.extra_config.items()
            )
        return text

    def wanted(self) -> dict[str, str]:
        return kconfig.wanted_values(self.extra_config)

    def _digest(self, fields: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]

    def base_key(self, toolchain: str) -> str:
        """The build directory: everything but the source's state and the patches."""
        return self._digest(
            {
                "builder": BUILDER_VERSION,
                "location": self.source.location,
                # the assignments, not the text: a reworded comment changes no object
                "fragment": list(kconfig.parse_assignments(self.fragment_text()).items()),
                "toolchain": toolchain,
                "arch": ARCH,
            }
        )

    def build_key(self, toolchain: str) -> str:
        """The built kernel: the base plus what the source holds and the patches' content."""
        return self._digest(
            {
                "base": self.base_key(toolchain),
                "identity": self.source.identity.text,
                "patches": [p.digest for p in self.patches],
            }
        )


@dataclass(frozen=True)
class BuiltKernel:
    entry: Path
    release: str
    bzimage: Path
    vmlinux: Path | None
    meta: dict[str, Any]


def toolchain_id() -> str:
    """The compiler and linker versions, which every object depends on."""
    found = []
    for argv in (["gcc", "--version"], ["ld", "--version"]):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError:
            found.append(f"{argv[0]}: not found")
            continue
        found.append((proc.stdout.splitlines() or ["?"])[0].strip())
    return "; ".join(found)


def _make_env() -> dict[str, str]:
    # A make above us (a user's Makefile driving the matrix) must not lend its jobserver
    # or flags to the kernel's build.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["LC_ALL"] = "C"
    return env


def _tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _first_error(log: Path) -> str:
    try:
        for line in log.read_text(errors="replace").splitlines():
            if _ERROR.search(line) and not line.startswith("$ "):
                return line.strip()
    except OSError:
        pass
    return ""


def _elapsed(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class _Make:
    """make in the build directory, output appended to the log, progress every 30 s."""

    def __init__(self, request: BuildRequest, farm: Path, obj: Path, log: Path, say: Log) -> None:
        self.request = request
        self.farm = farm
        self.obj = obj
        self.log = log
        self.say = say

    def argv(self, *targets: str, jobs: int = 1) -> list[str]:
        return [
            "make",
            "-C",
            str(self.farm),
            f"O={self.obj}",
            f"ARCH={ARCH}",
            f"-j{jobs}",
            *targets,
        ]

    def run(self, *targets: str, jobs: int = 1, what: str = "") -> int:
        """Run make; the number of files it compiled. BuildError when it fails."""
        argv = self.argv(*targets, jobs=jobs)
        started = last_said = time.monotonic()
        compiled = 0
        with open(self.log, "a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            # Registered with the matrix's children: a stop signal ends make with the run,
            # and leaving the block any other way kills it.
            with CHILDREN.started(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_make_env(),
                text=True,
                errors="replace",
            ) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    if _COMPILED.match(line):
                        compiled += 1
                    now = time.monotonic()
                    if what and now - last_said >= PROGRESS_EVERY_S:
                        self.say(f"{what}: {compiled} files compiled, {_elapsed(now - started)}")
                        last_said = now
                code = proc.wait()
        CHILDREN.check()  # make was stopped by a signal to the run: not a build failure
        if code != 0:
            # compiler messages name files by the farm's absolute path
            error = _first_error(self.log).replace(f"{self.farm}/", "")
            error = error or f"make {' '.join(targets)} exited {code}"
            raise BuildError(f"build failed: {error}", self.log, _tail(self.log))
        return compiled


def _is_kconfig(path: str) -> bool:
    return Path(path).name.startswith("Kconfig") or path.startswith(
        ("arch/x86/configs/", "kernel/configs/")
    )


def _restore_mtime_if_same(path: Path, before: bytes | None, stat: os.stat_result | None) -> None:
    """A regenerated .config equal to the one before keeps its old mtime, so make does not
    run syncconfig and rewrite every generated header for nothing."""
    if before is not None and stat is not None and path.read_bytes() == before:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def configure(
    request: BuildRequest, make: _Make, index: Mapping[str, kconfig.Symbol]
) -> kconfig.ConfigCheck:
    """tinyconfig + the fragment + olddefconfig in the build directory, then the check."""
    config = make.obj / ".config"
    before = config.read_bytes() if config.is_file() else None
    stat = config.stat() if config.is_file() else None
    make.run("tinyconfig")
    with open(config, "a") as out:
        out.write("\n" + request.fragment_text())
    make.run("olddefconfig")
    _restore_mtime_if_same(config, before, stat)
    return kconfig.check_config(kconfig.read_config(config), request.wanted(), index)


def _config_error(check: kconfig.ConfigCheck, when: str) -> str:
    return f"the kernel dropped options {when}: " + "; ".join(map(str, check.dropped))


def _cached(entry: Path) -> BuiltKernel | None:
    try:
        meta = json.loads((entry / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    vmlinux = entry / "vmlinux"
    return BuiltKernel(
        entry, meta["release"], entry / "bzImage", vmlinux if vmlinux.is_file() else None, meta
    )


def build(request: BuildRequest, cache: Path, say: Log, what: str = "") -> BuiltKernel:
    """The built kernel for ``request``, from the cache or built now (incrementally in the
    source's build directory). BuildError for a patch that does not apply, a dropped
    option or a failed compile."""
    what = what or request.source.label
    toolchain = toolchain_id()
    key = request.build_key(toolchain)
    entry = cache / "built" / key
    found = _cached(entry)
    if found:
        return found
    base = request.base_key(toolchain)
    base_dir = cache / "kbuild" / base
    with locked(cache / "locks" / f"kbuild-{base}.lock"):
        found = _cached(entry)  # another run may have built it while we waited
        if found:
            return found
        return _build_locked(request, base_dir, entry, toolchain, say, what)


def _build_locked(
    request: BuildRequest, base_dir: Path, entry: Path, toolchain: str, say: Log, what: str
) -> BuiltKernel:
    started = time.monotonic()
    base_dir.mkdir(parents=True, exist_ok=True)
    log = base_dir / "build.log"
    if log.exists():
        os.replace(log, base_dir / "build.log.1")
    log.write_text(f"# uffdharness build of {what}\n# source {request.source.identity}\n")
    farm = Farm(request.source.path, base_dir / "farm")
    obj = base_dir / "obj"
    if not farm.manifest_path.is_file():
        shutil.rmtree(obj, ignore_errors=True)  # objects of a farm that is gone mean nothing
    write_atomic(
        base_dir / "base.json",
        json.dumps(
            {"source": request.source.location, "toolchain": toolchain, "arch": ARCH}, indent=2
        ).encode(),
    )
    say(f"{what}: preparing the source ({request.source.identity})")
    try:
        synced = farm.sync(request.patches, log)
    except patches.PatchError as exc:
        raise BuildError(str(exc), log, _tail(log, 12)) from exc
    if any((farm.root / marker).exists() for marker in UNCLEAN_MARKERS):
        # An in-tree build or `make headers` ran in the source: kbuild refuses O= then.
        # mrproper in the farm only unlinks the farm's names; the source keeps its files.
        say(f"{what}: the source tree is not clean; running mrproper in the build's copy")
        _Make(request, farm.root, obj, log, say).run("mrproper")
        farm.exclude_missing()
    obj.mkdir(exist_ok=True)
    make = _Make(request, farm.root, obj, log, say)
    index = kconfig.symbol_index(farm.root)
    stamp = base_dir / "configured"
    # A new tinyconfig when the Kconfig files may differ: another state of the source, or
    # patches that touch a Kconfig file (the rest of a patch cannot change the .config).
    kconfig_patches = [p for p in request.patches if any(_is_kconfig(f) for f in p.touched)]
    configured_for = f"{request.source.identity}\n{patch_set_digest(kconfig_patches)}\n"
    config_s = 0.0
    if not (
        stamp.is_file() and stamp.read_text() == configured_for and (obj / ".config").is_file()
    ):
        config_started = time.monotonic()
        check = configure(request, make, index)
        config_s = time.monotonic() - config_started
        if not check.ok:
            stamp.unlink(missing_ok=True)
            raise BuildError(_config_error(check, "after olddefconfig"), log)
        stamp.write_text(configured_for)
    compile_started = time.monotonic()
    say(f"{what}: compiling with -j{request.jobs} (progress every {PROGRESS_EVERY_S:.0f} s)")
    compiled = make.run("bzImage", jobs=request.jobs, what=f"{what}: compiling")
    compile_s = time.monotonic() - compile_started
    check = kconfig.check_config(kconfig.read_config(obj / ".config"), request.wanted(), index)
    if not check.ok:
        stamp.unlink(missing_ok=True)
        raise BuildError(_config_error(check, "during the build (a patched Kconfig?)"), log)
    release = (obj / "include" / "config" / "kernel.release").read_text().strip()
    meta = {
        "release": release,
        "source": request.source.label,
        "source_location": request.source.location,
        "identity": request.source.identity.text,
        "package_version": request.source.package_version,
        "patches": [
            {"file": str(p.path), "sha256": p.digest, "carries_fixes": list(p.carries_fixes)}
            for p in request.patches
        ],
        "extra_config": dict(request.extra_config),
        "toolchain": toolchain,
        "config_check": check.summary(),
        "absent_options": list(check.absent),
        "files_compiled": compiled,
        "farm": {"linked": synced.linked, "copied": synced.copied, "patched": list(synced.patched)},
        "config_s": round(config_s, 1),
        "compile_s": round(compile_s, 1),
        "total_s": round(time.monotonic() - started, 1),
        "build_dir": str(base_dir),
    }
    _store(entry, obj, log, meta)
    say(
        f"{what}: built {release} in {_elapsed(meta['total_s'])} ({compiled} files compiled; "
        f"{check.summary()})"
    )
    found = _cached(entry)
    assert found is not None
    return found


def _store(entry: Path, obj: Path, log: Path, meta: dict[str, Any]) -> None:
    """Copy what the build made into its own cache entry: the build directory moves on."""
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(obj / "arch" / "x86" / "boot" / "bzImage", tmp / "bzImage")
    shutil.copyfile(obj / ".config", tmp / "config")
    shutil.copyfile(log, tmp / "build.log")
    elf = obj / "vmlinux"
    meta["vmlinux"] = False
    if elf.is_file():
        data = elf.read_bytes()
        if bzimage.has_pvh_entry(data):
            (tmp / "vmlinux").write_bytes(data)
            meta["vmlinux"] = True
    (tmp / "kernel.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
