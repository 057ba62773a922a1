"""Build the small initramfs that mounts the host's root over virtio-9p and runs one job.

Contents: a static busybox with the applets /init uses, the 9p/virtio modules the kernel
does not have built in (decompressed, in load order), zram where the kernel has it, and
/init. Built once per kernel and cached beside it, named by a hash of everything that goes
in. /init gives the guest a swap device on zram, so the scenarios that swap pages out
(MADV_PAGEOUT) run there; a kernel without zram boots as before, without swap.

The guest side of the protocol with guest.py (the results share is mounted at JOB_DIR):
    JOB_DIR/job.sh     written by the host; run as `chroot /newroot /bin/sh JOB_DIR/job.sh`
    JOB_DIR/exit_code  written by /init after the job returns
Console markers: START_MARKER when the job starts, END_MARKER rc=N after it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from . import hosttools, modules
from .cachedir import locked, write_atomic
from .cpio import CpioWriter
from .kernels import KernelImage

ROOT_TAG = "hostroot"
RESULTS_TAG = "results"
JOB_DIR = "/tmp/uffdharness-job"
START_MARKER = "UFFDHARNESS-JOB-START"
END_MARKER = "UFFDHARNESS-JOB-END"
# virtio_pci finds the PCI transport, 9pnet_virtio the 9p channels on it, 9p the file
# system; netfs, fscache, virtio_ring etc. follow from modules.dep.
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
# zram, with zsmalloc where that is a module (5.10, 6.1) and the lz4 library its default
# compressor needs from 6.12 on, all from modules.dep. Loaded when the kernel has it.
OPTIONAL_MODULES = ("zram",)
SWAP_DEVICE = "zram0"  # the one device zram creates by default (num_devices=1)
# Room for what a scenario swaps out (a few pages); zram allocates only what it stores.
SWAP_DISKSIZE = "64M"
APPLETS = (
    "sh",
    "mount",
    "umount",
    "mkdir",
    "insmod",
    "chroot",
    "cat",
    "echo",
    "sync",
    "poweroff",
    "sleep",
    "ls",
    "mkswap",
    "swapon",
)
# cache=loose: the root share is read-only and nothing else changes it while the guest
# runs a job, so the guest may cache data and metadata; measured faster than cache=none.
ROOT_MOUNT_OPTIONS = "trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144"
# cache=none: every write reaches the host before the guest powers off.
RESULTS_MOUNT_OPTIONS = "trans=virtio,version=9p2000.L,cache=none,msize=262144"


def init_script(module_names: list[str]) -> str:
    inserts = "\n".join(
        f'insmod /lib/modules/{name}.ko || echo "uffdharness-init: insmod {name} failed"'
        for name in module_names
    )
    return f"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{inserts}
swap_on() {{
    [ -e /sys/block/{SWAP_DEVICE}/disksize ] || return 1
    echo {SWAP_DISKSIZE} > /sys/block/{SWAP_DEVICE}/disksize || return 1
    mkswap /dev/{SWAP_DEVICE} >/dev/null || return 1
    swapon /dev/{SWAP_DEVICE}
}}
swap_on || echo "uffdharness-init: no swap (no zram device)"
fail() {{
    echo "uffdharness-init: $*"
    echo "{END_MARKER} rc=init-failed"
    poweroff -f
    echo o > /proc/sysrq-trigger
}}
mount_9p() {{
    # the virtio channel may appear a moment after the driver binds
    for try in 1 2 3 4 5 6 7 8 9 10; do
        mount -t 9p -o "$3" "$1" "$2" 2>/dev/null && return 0
        sleep 0.2
    done
    mount -t 9p -o "$3" "$1" "$2"
}}
mkdir -p /newroot
mount_9p {ROOT_TAG} /newroot {ROOT_MOUNT_OPTIONS} || fail "cannot mount the host root"
for fs in proc sys dev; do mount --bind /$fs /newroot/$fs || fail "bind /$fs"; done
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || fail "tmpfs /tmp"
mount -t tmpfs -o mode=755 tmpfs /newroot/run
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mkdir -p /newroot{JOB_DIR}
mount_9p {RESULTS_TAG} /newroot{JOB_DIR} {RESULTS_MOUNT_OPTIONS} || fail "cannot mount results"
echo "{START_MARKER} $(cat /proc/uptime)"
chroot /newroot /bin/sh {JOB_DIR}/job.sh
rc=$?
echo $rc > /newroot{JOB_DIR}/exit_code
sync
echo "{END_MARKER} rc=$rc"
poweroff -f
echo o > /proc/sysrq-trigger
"""


def build(kernel: KernelImage, busybox: Path) -> bytes:
    """The initramfs archive for `kernel`, without caching."""
    order = _module_order(kernel)
    writer = CpioWriter()
    for directory in ("bin", "dev", "proc", "sys", "tmp", "newroot", "lib/modules"):
        writer.add_dir(directory)
    writer.add_char_device("dev/console", 5, 1)
    writer.add_char_device("dev/null", 1, 3, 0o666)
    writer.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in APPLETS:
        writer.add_symlink(f"bin/{applet}", "busybox")
    assert kernel.modules_dir is not None or not order
    for entry in order:
        writer.add_file(
            f"lib/modules/{entry.name}.ko", modules.read_module(kernel.modules_dir, entry)
        )  # type: ignore[arg-type]
    writer.add_file("init", init_script([e.name for e in order]).encode(), 0o755)
    return writer.getvalue()


def _module_order(kernel: KernelImage) -> list[modules.ModuleEntry]:
    if kernel.modules_dir is None:
        return []  # a kernel given without modules: assume 9p, virtio and zram are built in
    index = modules.load_index(kernel.modules_dir)
    optional = [name for name in OPTIONAL_MODULES if modules.available(index, name)]
    return modules.load_order(index, [*WANTED_MODULES, *optional])


def _fingerprint(kernel: KernelImage, busybox: Path) -> str:
    digest = hashlib.sha256()
    digest.update(busybox.read_bytes())
    order = _module_order(kernel)
    digest.update(init_script([e.name for e in order]).encode())
    for entry in order:
        assert kernel.modules_dir is not None
        stat = (kernel.modules_dir / entry.path).stat()
        digest.update(f"{entry.path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cached(kernel: KernelImage) -> Path:
    """Path to the initramfs for `kernel`, building it on first use."""
    if kernel.cache_dir is None:
        raise ValueError("the host kernel needs no initramfs")
    busybox = hosttools.find_busybox()
    if busybox is None:
        hosttools.require(hosttools.BOOT_TOOLS)
        raise AssertionError("unreachable")
    target = kernel.cache_dir / f"initramfs-{_fingerprint(kernel, busybox)}.cpio"
    with locked(kernel.cache_dir / "initramfs.lock"):
        if not target.is_file():
            write_atomic(target, build(kernel, busybox))
    return target
