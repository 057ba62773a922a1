"""The guest's swap: /init puts a swap device on zram before the job runs, the initramfs
carries zram and what it depends on when the kernel has it, and kernels built from source
get zram built in."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from uffdharness.matrix import cpio, initramfs, modules
from uffdharness.matrix.kbuild import options
from uffdharness.matrix.kernels import KernelImage


def _kernel(tmp_path: Path, dep: str, builtin: str = "") -> KernelImage:
    modules_dir = tmp_path / "lib" / "modules" / "6.1.0-test"
    (modules_dir / "kernel").mkdir(parents=True)
    (modules_dir / "modules.dep").write_text(dep)
    (modules_dir / "modules.builtin").write_text(builtin)
    for line in dep.splitlines():
        path = line.partition(":")[0]
        (modules_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (modules_dir / path).write_bytes(b"\x7fELF" + modules.module_name(path).encode())
    return KernelImage(
        "test", "6.1.0-test", tmp_path / "bzImage", None, modules_dir, None, tmp_path
    )


NINE_P = (
    "kernel/9p.ko: kernel/9pnet.ko\nkernel/9pnet.ko:\nkernel/9pnet_virtio.ko: kernel/9pnet.ko\n"
)
VIRTIO_BUILTIN = "kernel/drivers/virtio/virtio_pci.ko\n"


def _archive(kernel: KernelImage, tmp_path: Path) -> dict[str, cpio.CpioEntry]:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF-busybox")
    return {entry.name: entry for entry in cpio.read(initramfs.build(kernel, busybox))}


def test_zram_and_its_allocator_are_loaded_before_swap_goes_on(tmp_path):
    dep = (
        NINE_P
        + "kernel/mm/zsmalloc.ko:\nkernel/drivers/block/zram/zram.ko: kernel/mm/zsmalloc.ko\n"
    )
    entries = _archive(_kernel(tmp_path, dep, VIRTIO_BUILTIN), tmp_path)
    assert entries["lib/modules/zram.ko"].data == b"\x7fELFzram"
    assert entries["lib/modules/zsmalloc.ko"].data == b"\x7fELFzsmalloc"
    for applet in ("mkswap", "swapon"):
        assert entries[f"bin/{applet}"].data == b"busybox"
    init = entries["init"].data.decode()
    zsmalloc = init.index("insmod /lib/modules/zsmalloc.ko")
    zram = init.index("insmod /lib/modules/zram.ko")
    assert zsmalloc < zram < init.index("swap_on ||") < init.index("chroot /newroot")


def test_a_kernel_without_zram_still_gets_its_initramfs(tmp_path):
    entries = _archive(_kernel(tmp_path, NINE_P, VIRTIO_BUILTIN), tmp_path)
    assert not [name for name in entries if "zram" in name]
    init = entries["init"].data.decode()
    assert "insmod /lib/modules/zram.ko" not in init
    assert "insmod /lib/modules/9p.ko" in init


def test_built_in_zram_is_not_loaded(tmp_path):
    builtin = VIRTIO_BUILTIN + "kernel/drivers/block/zram/zram.ko\nkernel/mm/zsmalloc.ko\n"
    init = _archive(_kernel(tmp_path, NINE_P, builtin), tmp_path)["init"].data.decode()
    assert "zram.ko" not in init and "swap_on ||" in init


def test_zram_with_an_unresolvable_dependency_is_left_out(tmp_path):
    dep = NINE_P + "kernel/drivers/block/zram/zram.ko: kernel/mm/zsmalloc.ko\n"
    index = modules.load_index(_kernel(tmp_path, dep, VIRTIO_BUILTIN).modules_dir)
    assert not modules.available(index, "zram")
    assert modules.available(index, "9p") and modules.available(index, "virtio_pci")


def _swap_on(tmp_path: Path) -> str:
    """/init's swap_on function with /sys and /dev under tmp_path, and a call of it."""
    script = initramfs.init_script([])
    function = re.search(r"^swap_on\(\) \{\n.*?^\}\n", script, re.M | re.S)
    assert function is not None
    device = f"/dev/{initramfs.SWAP_DEVICE}"
    body = function.group(0).replace("/sys/", f"{tmp_path}/sys/")
    body = body.replace(device, f"{tmp_path}{device}")
    return body + 'swap_on && echo "swap on" || echo "no swap"\n'


def _stub_tools(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkswap", "swapon"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/calls\n')
        stub.chmod(0o755)
    return bin_dir


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_swap_on_sizes_formats_and_enables_the_zram_device(tmp_path):
    device = tmp_path / "sys" / "block" / initramfs.SWAP_DEVICE
    device.mkdir(parents=True)
    (device / "disksize").write_text("0\n")
    bin_dir = _stub_tools(tmp_path)
    run = subprocess.run(
        ["sh", "-c", _swap_on(tmp_path)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip() == "swap on"
    assert (device / "disksize").read_text().strip() == initramfs.SWAP_DISKSIZE
    node = f"{tmp_path}/dev/{initramfs.SWAP_DEVICE}"
    assert (tmp_path / "calls").read_text().splitlines() == [f"mkswap {node}", f"swapon {node}"]


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_swap_on_without_a_zram_device_touches_nothing(tmp_path):
    bin_dir = _stub_tools(tmp_path)
    run = subprocess.run(
        ["sh", "-c", _swap_on(tmp_path)],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.strip() == "no swap"
    assert not (tmp_path / "calls").exists()


def test_the_init_script_with_swap_is_valid_shell():
    script = initramfs.init_script(["zsmalloc", "zram"])
    subprocess.run(["sh", "-n"], input=script.encode(), check=True)
    assert "uffdharness-init: no swap" in script


def test_kernels_built_from_source_get_zram_swap_and_io_uring():
    fragment = options.fragment()
    for name in ("BLOCK", "SWAP", "ZRAM", "ZSMALLOC", "CRYPTO", "CRYPTO_LZO", "IO_URING"):
        assert name in options.REQUIRED_NAMES
        assert f"CONFIG_{name}=y\n" in fragment
