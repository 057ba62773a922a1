"""Boot other kernels in qemu and run a command from the host's root file system in them.

The groundwork of `uffdharness matrix`, one module per job. Nothing is imported here: every
`uffdharness` start builds the command line, in guests too, and the modules below cost
time there; import the one you need.

- defaults: constants the command line shows (DEFAULT_GUEST_TIMEOUT); imports nothing.
- kernelspec: parse SPEC strings (`host`, `debian:6.1`, `debian:latest`, a Debian package
  version or name, a path to a bzImage/vmlinux with optional `,modules=DIR`).
- kernels: `resolve(spec) -> KernelImage`, fetching Debian kernels into the cache
  (`$XDG_CACHE_HOME/uffdharness/kernels`) under a file lock; a warm cache needs no network.
  Helped by aptmirror (the host's mirror), privateapt (apt with its own sources and state),
  debindex (which packages a spec means; the 7.x split layout; python-debian parses the
  records and orders versions) and bzimage (release string; vmlinux extraction, which boots
  1-4 s faster under TCG).
- initramfs: busybox + 9p/virtio modules (modules: modules.dep order, built-ins,
  .ko.xz/.ko.zst) + /init, as a newc archive written by cpio; cached per kernel.
- guest: `run_in_guest(kernel, argv, timeout, env, config=GuestConfig(accel=...))
  -> GuestResult`, under the accelerator it is given.
- kvmprobe: decides once whether KVM works (it does not on the development machine); TCG
  is used otherwise.
- runner: one guest per kernel running `uffdharness run`, the accelerator chosen with
  kvmprobe; expectations, report and merge judge and print the results; reportschema
  checks every field of the JSON they read (a guest's report, merge inputs); progress
  prints the runner's milestones (a live line on a terminal).
- children: every process the matrix starts (qemu, apt-get, dpkg-deb, the host's run), so
  a stop request (the CLI's SIGINT/SIGTERM/SIGHUP handler) ends them all.
- hosttools: which host programs are missing, and the apt-get line that installs them.
- kbuild/: kernels built from source (src:, debian-src: specs), cached and incremental.
"""
