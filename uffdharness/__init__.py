"""uffdharness: drive the real Linux userfaultfd(2) machinery and check what the kernel does."""

__version__ = "0.1.0"
