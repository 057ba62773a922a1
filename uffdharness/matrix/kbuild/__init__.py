"""Kernels built from source for the matrix: ``src:PATH`` and ``debian-src:X.Y`` specs,
with ``,patch=FILE`` and ``,config=FRAGMENT``. Nothing is imported here.

- options: the config options the catalogue and a module-less guest need (the one list;
  ``uffdharness kconfig`` prints it).
- kconfig: fragments and .config files; the tree's Kconfig symbols; which options a
  generated .config dropped.
- specs: parse and check a source spec before any work.
- patches: a patch's files, hunks and declared fixes (``Carries-fix:``); applying it.
- identity: what a tree holds (git HEAD + dirty state, or file stats, or a package).
- farm: the hard-link farm the build reads, kept in step with the source and patches.
- debsource: Debian's linux-source-X.Y through the private apt setup.
- build: ``build(BuildRequest) -> BuiltKernel``, cached, incremental per build directory.
- resolve: a source spec -> KernelImage, for matrix.kernels.resolve.
"""
