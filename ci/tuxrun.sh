#!/bin/bash
# uffdharness inside a LAVA job, with tuxrun (https://tuxrun.org): the harness and an
# interpreter go into the guest as one overlay tarball, and the job's command is
# `uffdharness run --lava`, whose <LAVA_SIGNAL_TESTCASE ...> lines become the job's test
# cases (one per scenario x memory; known-bug is pass with the reason on the line before).
#
#   ci/tuxrun.sh overlay [OUT]              build the overlay only (offline; no tuxrun needed)
#   ci/tuxrun.sh run KERNEL [RUN-ARGS...]   build it, then boot KERNEL (a bzImage path or URL)
#                                           in tuxrun's qemu-x86_64 and run the catalogue
#                                           (the overlay: $OVERLAY, uffdharness-overlay.tar.xz)
#
# e.g.  ci/tuxrun.sh run ~/linux/arch/x86/boot/bzImage -k 'unregister-merge*' --memory anon
#
# What the tuxrun step runs (tuxrun's own rootfs; --overlay URL [PATH] is extracted at PATH,
# '/' by default; everything after -- is the command the job runs in the guest):
#
#   tuxrun --device qemu-x86_64 --kernel bzImage \
#          --overlay file://$PWD/uffdharness-overlay.tar.xz \
#          --timeouts boot=10 commands=30 \
#          -- uffdharness run --lava --quiet
#
# The overlay is self-contained, so any tuxrun rootfs will do (the default buildroot one has
# no Python): under /opt/uffdharness it holds this interpreter (PYTHON, default .venv/bin/
# python: its base installation's binary and standard library, without test/, idlelib/,
# tkinter/, ... and the static libpython), uffdharness with its compiled extension and its
# runtime dependencies (cffi, pyelftools, python-debian, ...: the distributions
# uffdharness requires, found with importlib.metadata), every shared library those need
# (ldd) with their own dynamic loader, and bin/uffdharness, a wrapper that starts the
# interpreter through that loader with PYTHONHOME set; /usr/bin/uffdharness links to it.
# The kernel needs what `uffdharness kconfig` prints (userfaultfd, hugetlbfs, ...); the
# run skips, with the reason, whatever the kernel or the rootfs lacks (e.g. a hugepage
# pool the guest's memory cannot hold).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$here/.venv/bin/python}
PREFIX=/opt/uffdharness # where the overlay puts everything in the guest

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# build_overlay OUT: the overlay tarball (OUT ends in .tar.xz, .tar.gz or .tar).
build_overlay() {
    local out=$1 stage compress
    case $out in
        *.tar.xz) compress=(-J) ;;
        *.tar.gz) compress=(-z) ;;
        *.tar) compress=() ;;
        *) echo "ci/tuxrun.sh: $out: the overlay must be .tar.xz, .tar.gz or .tar" >&2; exit 2 ;;
    esac
    mkdir -p "$(dirname "$out")"
    stage=$(mktemp -d)
    # shellcheck disable=SC2064 # the stage is known now
    trap "rm -rf '$stage'" EXIT
    "$PYTHON" - "$stage" "$PREFIX" <<'PY'
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

stage, prefix = Path(sys.argv[1]), sys.argv[2]
root = stage / prefix.lstrip("/")
version = f"python{sys.version_info.major}.{sys.version_info.minor}"
stdlib = Path(sysconfig.get_path("stdlib"))  # the base installation's, also from a venv
lib = root / "lib"
pylib = lib / version
site = pylib / "site-packages"
UNNEEDED = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
            "pydoc_data", "distutils"}

# the interpreter: the base installation's binary, whatever venv PYTHON is in
binary = Path(os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable")
                               else sys.executable))
(root / "bin").mkdir(parents=True)
shutil.copy2(binary, root / "bin" / "python3")
shutil.copytree(
    stdlib,
    pylib,
    symlinks=False,
    ignore=lambda folder, names: [
        n for n in names
        if (Path(folder) == stdlib and (n in UNNEEDED or n.startswith("config-")))
        or n in ("test", "tests")  # ctypes/test, unittest/test, ...
        or n.startswith("_tkinter")  # it alone needs X11
        or n.endswith((".opt-1.pyc", ".opt-2.pyc"))  # only for python -O
    ],
)

# uffdharness and what it requires at run time, file by file from their distributions
def requirements(name, seen):
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return  # a requirement for another Python (a marker), or an optional one
    seen[key] = dist
    for requirement in dist.requires or []:
        if "extra ==" in requirement:
            continue
        marker = requirement.split(";", 1)
        if len(marker) == 2 and not _marker_holds(marker[1]):
            continue
        requirements(re.split(r"[ <>=!~\[;(]", marker[0].strip(), maxsplit=1)[0], seen)

def _marker_holds(text):
    try:
        from packaging.markers import Marker
    except ImportError:
        return True  # copy it: an unneeded package does no harm
    return Marker(text).evaluate()

dists = {}
requirements("uffdharness", dists)
import uffdharness

package = Path(uffdharness.__file__).resolve().parent
shutil.copytree(package, site / "uffdharness",
                ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.o"))
purelib = Path(sysconfig.get_path("purelib")).resolve()
for key, dist in dists.items():
    if key == "uffdharness":
        continue
    for file in dist.files or []:
        source = Path(dist.locate_file(file)).resolve()
        if not source.is_file() or "__pycache__" in source.parts:
            continue
        try:
            relative = source.relative_to(purelib)
        except ValueError:
            continue  # a script in bin/ and the like
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, site / relative)

# the shared libraries of the interpreter and of every extension module, with the loader
objects = [binary, *pylib.rglob("*.so")]
libraries, loader = {}, None
for path in objects:
    done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        found = re.search(r"=>\s+(/\S+)", line)
        if found:
            libraries[Path(found.group(1)).name] = found.group(1)
        elif line.strip().startswith("/"):
            loader = line.split()[0]
if loader is None:
    sys.exit(f"ci/tuxrun.sh: ldd names no dynamic loader for {binary}")
for name, path in {**libraries, Path(loader).name: loader}.items():
    shutil.copy2(os.path.realpath(path), lib / name)

wrapper = root / "bin" / "uffdharness"
wrapper.write_text(f"""#!/bin/sh
# uffdharness from the overlay: its own loader, libraries and interpreter
root=$(dirname "$(dirname "$(readlink -f "$0")")")
PYTHONHOME=$root PYTHONNOUSERSITE=1 exec "$root/lib/{Path(loader).name}" \\
    --library-path "$root/lib" "$root/bin/python3" -m uffdharness "$@"
""")
wrapper.chmod(0o755)
(stage / "usr" / "bin").mkdir(parents=True)
(stage / "usr" / "bin" / "uffdharness").symlink_to(f"{prefix}/bin/uffdharness")
print(f"overlay: {binary} ({version}), {len(dists)} distributions, "
      f"{len(libraries) + 1} shared libraries")
PY
    XZ_OPT=${XZ_OPT:--T0} tar -C "$stage" --owner=0 --group=0 "${compress[@]}" -cf "$out" .
    rm -rf "$stage"
    trap - EXIT
    echo "overlay: $out ($(du -h "$out" | cut -f1))"
}

case ${1:-} in
    overlay)
        build_overlay "$(realpath -m "${2:-uffdharness-overlay.tar.xz}")"
        ;;
    run)
        [ $# -ge 2 ] || usage
        kernel=$2
        shift 2
        overlay=$(realpath -m "${OVERLAY:-uffdharness-overlay.tar.xz}")
        build_overlay "$overlay"
        command -v tuxrun >/dev/null || {
            echo "ci/tuxrun.sh: tuxrun is not installed (pip install tuxrun; it runs qemu in podman or docker)" >&2
            exit 2
        }
        exec tuxrun --device qemu-x86_64 --kernel "$kernel" \
            --overlay "file://$overlay" \
            --timeouts boot=10 commands=30 \
            -- uffdharness run --lava --quiet "$@"
        ;;
    *) usage ;;
esac
