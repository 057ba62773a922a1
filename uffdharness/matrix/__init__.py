"""Boot other kernels in qemu and run a command from the host's root file system in them.

The groundwork of `uffdharness matrix`, one module per job:

- kernelspec: parse SPEC strings (`host`, `debian:6.1`, `debian:latest`, a Debian package
  version or name, a path to a bzImage/vmlinux with optional `,modules=DIR`).
- kernels: `resolve(spec) -> KernelImage`, fetching Debian kernels into the cache
  (`$XDG_CACHE_HOME/uffdharness/kernels`) under a file lock; a warm cache needs no network.
  Helped by aptmirror (the host's mirror), privateapt (apt with its own sources and state),
  debindex (which packages a spec means; the 7.x split layout), debversion (version order)
  and bzimage (release string; vmlinux extraction, which boots 1-4 s faster under TCG).
- initramfs: busybox + 9p/virtio modules (modules: modules.dep order, built-ins,
  .ko.xz/.ko.zst) + /init, as a newc archive written by cpio; cached per kernel.
- guest: `run_in_guest(kernel, argv, timeout, env) -> GuestResult`; kvmprobe decides once
  whether KVM works (it does not on the development machine) and TCG is used otherwise.
- hosttools: which host programs are missing, and the apt-get line that installs them.
"""

from .guest import GuestConfig, GuestResult, cpus_per_guest, run_in_guest
from .hosttools import MissingHostTools
from .kernels import KernelFetchError, KernelImage, cached_kernels, resolve
from .kernelspec import KernelSpec, SpecError, parse

__all__ = [
    "GuestConfig",
    "GuestResult",
    "KernelFetchError",
    "KernelImage",
    "KernelSpec",
    "MissingHostTools",
    "SpecError",
    "cached_kernels",
    "cpus_per_guest",
    "parse",
    "resolve",
    "run_in_guest",
]
