"""mmap, munmap, mremap, madvise, mprotect, fallocate, read, write and the io_uring calls that
pin pages: raise UffdError instead of returning -1."""

from __future__ import annotations

from ._native import ffi, lib
from .errors import UffdError

MAP_FAILED = 2**64 - 1

PROT_NONE = lib.PROT_NONE
PROT_READ = lib.PROT_READ
PROT_WRITE = lib.PROT_WRITE
PROT_RW = lib.PROT_READ | lib.PROT_WRITE
MAP_SHARED = lib.MAP_SHARED
MAP_PRIVATE = lib.MAP_PRIVATE
MAP_ANONYMOUS = lib.MAP_ANONYMOUS
MAP_FIXED = lib.MAP_FIXED
MAP_FIXED_NOREPLACE = lib.MAP_FIXED_NOREPLACE
MAP_NORESERVE = lib.MAP_NORESERVE
MAP_POPULATE = lib.MAP_POPULATE
MAP_HUGETLB = lib.MAP_HUGETLB
MREMAP_MAYMOVE = lib.MREMAP_MAYMOVE
MREMAP_FIXED = lib.MREMAP_FIXED
MREMAP_DONTUNMAP = lib.MREMAP_DONTUNMAP
MADV_DONTNEED = lib.MADV_DONTNEED
MADV_FREE = lib.MADV_FREE
MADV_REMOVE = lib.MADV_REMOVE
MADV_DONTFORK = lib.MADV_DONTFORK
MADV_DOFORK = lib.MADV_DOFORK
MADV_HUGEPAGE = lib.MADV_HUGEPAGE
MADV_NOHUGEPAGE = lib.MADV_NOHUGEPAGE
MADV_PAGEOUT = lib.MADV_PAGEOUT
MADV_COLD = lib.MADV_COLD
MADV_POPULATE_READ = lib.MADV_POPULATE_READ
MADV_POPULATE_WRITE = lib.MADV_POPULATE_WRITE
MADV_WILLNEED = lib.MADV_WILLNEED
MADV_COLLAPSE = 25  # UAPI asm-generic/mman-common.h (6.1); older C libraries lack it
# The advices a memory kind drops its pages with (KindSpec.drop_advice), by name.
ADVICE_NAMES = {MADV_DONTNEED: "MADV_DONTNEED", MADV_REMOVE: "MADV_REMOVE"}
MFD_CLOEXEC = lib.MFD_CLOEXEC
MFD_HUGETLB = lib.MFD_HUGETLB
FALLOC_FL_KEEP_SIZE = lib.FALLOC_FL_KEEP_SIZE
FALLOC_FL_PUNCH_HOLE = lib.FALLOC_FL_PUNCH_HOLE


def _ptr(addr: int):
    return ffi.cast("void *", addr)


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    result = int(ffi.cast("uintptr_t", lib.mmap(_ptr(addr), length, prot, flags, fd, offset)))
    if result == MAP_FAILED:
        raise UffdError(ffi.errno, "mmap", addr or None, length)
    return result


def munmap(addr: int, length: int) -> None:
    if lib.munmap(_ptr(addr), length) != 0:
        raise UffdError(ffi.errno, "munmap", addr, length)


def mremap(addr: int, old_length: int, new_length: int, flags: int, new_addr: int = 0) -> int:
    result = lib.mremap(_ptr(addr), old_length, new_length, flags, ffi.cast("void *", new_addr))
    result = int(ffi.cast("uintptr_t", result))
    if result == MAP_FAILED:
        raise UffdError(ffi.errno, "mremap", addr, old_length)
    return result


def madvise(addr: int, length: int, advice: int) -> None:
    if lib.madvise(_ptr(addr), length, advice) != 0:
        raise UffdError(ffi.errno, f"madvise({advice})", addr, length)


def mprotect(addr: int, length: int, prot: int) -> None:
    if lib.mprotect(_ptr(addr), length, prot) != 0:
        raise UffdError(ffi.errno, "mprotect", addr, length)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if lib.fallocate(fd, mode, offset, length) != 0:
        raise UffdError(ffi.errno, "fallocate", offset, length)


def memfd_create(name: str, flags: int = MFD_CLOEXEC) -> int:
    fd = lib.memfd_create(name.encode(), flags)
    if fd < 0:
        raise UffdError(ffi.errno, "memfd_create", detail=name)
    return fd


def fork_and_exit(exit_code: int = 0) -> int:
    """fork() a child that _exit()s at once; returns its pid. The fork happens in C with the
    GIL released: with EVENT_FORK the call blocks until a handler reads the fork event, and
    os.fork() would keep the GIL (and run Python's at-fork hooks) meanwhile."""
    pid = lib.uh_fork_and_exit(exit_code)
    if pid < 0:
        raise UffdError(-pid, "fork")
    return pid


def read_into(fd: int, addr: int, length: int) -> int:
    """read(2) from ``fd`` into [addr, addr + length): bytes read. The kernel's own
    copy_to_user() is the access, so on registered memory the fault is a kernel-mode one
    (EFAULT on a UFFD_USER_MODE_ONLY uffd). cffi releases the GIL for the call."""
    done = lib.read(fd, _ptr(addr), length)
    if done < 0:
        raise UffdError(ffi.errno, "read", addr, length)
    return done


def write_from(fd: int, addr: int, length: int) -> int:
    """write(2) of [addr, addr + length) to ``fd``: bytes written (the kernel reads it)."""
    done = lib.write(fd, _ptr(addr), length)
    if done < 0:
        raise UffdError(ffi.errno, "write", addr, length)
    return done


def io_uring_setup(entries: int = 1) -> int:
    """io_uring_setup(2) with default parameters: the ring's fd (O_CLOEXEC)."""
    fd = lib.uh_io_uring_setup(entries)
    if fd < 0:
        raise UffdError(-fd, "io_uring_setup")
    return fd


def io_uring_register_buffer(ring_fd: int, addr: int, length: int) -> None:
    """IORING_REGISTER_BUFFERS of one buffer: pins its pages FOLL_WRITE | FOLL_LONGTERM."""
    rc = lib.uh_io_uring_register_buffer(ring_fd, _ptr(addr), length)
    if rc < 0:
        raise UffdError(-rc, "IORING_REGISTER_BUFFERS", addr, length)


def io_uring_unregister_buffers(ring_fd: int) -> None:
    rc = lib.uh_io_uring_unregister_buffers(ring_fd)
    if rc < 0:
        raise UffdError(-rc, "IORING_UNREGISTER_BUFFERS")
