"""newc cpio writing (read back by our reader and by GNU cpio) and the initramfs contents."""

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from uffdharness.matrix import cpio, initramfs
from uffdharness.matrix.kernels import KernelImage


def _sample() -> bytes:
    writer = cpio.CpioWriter()
    writer.add_file("bin/busybox", b"\x7fELF" + b"x" * 1001, 0o755)  # odd size: padding
    writer.add_symlink("bin/sh", "busybox")
    writer.add_char_device("dev/console", 5, 1)
    writer.add_file("init", b"#!/bin/sh\n", 0o755)
    writer.add_dir("newroot")
    return writer.getvalue()


def test_round_trip():
    entries = {e.name: e for e in cpio.read(_sample())}
    assert list(entries) == [
        "bin",
        "bin/busybox",
        "bin/sh",
        "dev",
        "dev/console",
        "init",
        "newroot",
    ]
    assert entries["bin/busybox"].data == b"\x7fELF" + b"x" * 1001
    assert stat.S_IMODE(entries["bin/busybox"].mode) == 0o755
    assert stat.S_ISLNK(entries["bin/sh"].mode) and entries["bin/sh"].data == b"busybox"
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    assert stat.S_ISDIR(entries["bin"].mode)


def test_layout_is_four_byte_aligned_and_ends_with_trailer():
    archive = _sample()
    assert len(archive) % 4 == 0
    assert archive.startswith(b"070701")
    assert b"TRAILER!!!\0" in archive[-128:]
    for offset in range(0, len(archive)):
        if archive.startswith(b"070701", offset):
            assert offset % 4 == 0


def test_duplicate_names_are_rejected():
    writer = cpio.CpioWriter()
    writer.add_dir("bin")
    with pytest.raises(ValueError):
        writer.add_dir("bin/")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")
def test_gnu_cpio_reads_our_archive(tmp_path: Path):
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=_sample(), capture_output=True, check=True
    ).stdout.decode()
    assert "bin/sh -> busybox" in listing
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        input=_sample(),
        cwd=tmp_path,
        check=True,
    )
    assert (tmp_path / "bin" / "busybox").read_bytes() == b"\x7fELF" + b"x" * 1001
    assert (tmp_path / "init").stat().st_mode & 0o111


def test_initramfs_has_busybox_modules_in_order_and_init(tmp_path: Path):
    modules_dir = tmp_path / "lib" / "modules" / "6.1.0-test"
    (modules_dir / "kernel").mkdir(parents=True)
    (modules_dir / "modules.dep").write_text(
        "kernel/9p.ko: kernel/9pnet.ko\nkernel/9pnet.ko:\nkernel/9pnet_virtio.ko: kernel/9pnet.ko\n"
    )
    (modules_dir / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    for name in ("9p", "9pnet", "9pnet_virtio"):
        (modules_dir / "kernel" / f"{name}.ko").write_bytes(b"\x7fELF" + name.encode())
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF-busybox")
    kernel = KernelImage(
        "test", "6.1.0-test", tmp_path / "bzImage", None, modules_dir, None, tmp_path
    )
    entries = {e.name: e for e in cpio.read(initramfs.build(kernel, busybox))}
    assert entries["bin/busybox"].data == b"\x7fELF-busybox"
    for applet in initramfs.APPLETS:
        assert entries[f"bin/{applet}"].data == b"busybox"
    assert entries["lib/modules/9pnet.ko"].data == b"\x7fELF9pnet"
    init = entries["init"].data.decode()
    assert init.index("insmod /lib/modules/9pnet.ko") < init.index("insmod /lib/modules/9p.ko")
    assert "virtio_pci" not in init  # built in
    assert f"mount_9p {initramfs.ROOT_TAG} /newroot" in init
    assert "poweroff -f" in init and initramfs.START_MARKER in init


def test_initramfs_script_is_valid_shell():
    script = initramfs.init_script(["virtio", "9p"])
    sh = shutil.which("sh")
    assert sh
    subprocess.run([sh, "-n"], input=script.encode(), check=True)
