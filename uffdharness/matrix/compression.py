"""Decompress the formats kernels use for their payload and modules, by magic number."""

from __future__ import annotations

import lzma
import shutil
import zlib

from .children import CHILDREN

MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x5d\x00\x00", "lzma"),
    (b"BZh", "bzip2"),
    (b"\x89LZO", "lzo"),
    (b"\x02\x21\x4c\x18", "lz4"),
)


def detect(data: bytes) -> str | None:
    for magic, name in MAGICS:
        if data.startswith(magic):
            return name
    return None


def _zstd(data: bytes) -> bytes:
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        zstandard = None
    if zstandard is not None:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if shutil.which("zstd") is None:
        raise RuntimeError(
            "zstd-compressed data: install the zstd CLI (apt-get install -y zstd) "
            "or the zstandard Python module"
        )
    proc = CHILDREN.run(["zstd", "-dcq"], input=data, text=False)
    # zstd exits non-zero on bytes after the frame (the kernel's size word) but has
    # written the whole frame by then; the caller checks what came out.
    if not proc.stdout:
        raise RuntimeError(f"zstd could not decompress: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def decompress(data: bytes) -> bytes:
    """Decompress one stream of `data`, ignoring anything after it; ValueError if unknown."""
    kind = detect(data)
    if kind == "gzip":
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data)
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if kind == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if kind == "zstd":
        return _zstd(data)
    raise ValueError(f"cannot decompress {kind or 'unrecognised'} data in Python")
