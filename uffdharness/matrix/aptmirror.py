"""Find the Debian mirror the host's apt already uses, so the private apt setup reuses it.

Reads /etc/apt/sources.list, sources.list.d/*.list (one-line format) and *.sources (deb822);
files with any other suffix (e.g. `*.disabled`) are ignored, as apt ignores them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import Deb822

DEFAULT_ARCHIVE = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"

_DEBIAN_CODENAMES = {
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "experimental",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
}


@dataclass(frozen=True)
class SourceEntry:
    uri: str
    suite: str


@dataclass(frozen=True)
class Mirror:
    archive: str  # serves bookworm, trixie, sid, ...
    security: str  # serves bookworm-security, ...
    origin: str  # where the URLs came from, for messages


def parse_one_line(text: str) -> list[SourceEntry]:
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line[len("deb ") :])
        fields = line.split()
        if len(fields) >= 2:
            entries.append(SourceEntry(fields[0].rstrip("/"), fields[1]))
    return entries


def parse_deb822(text: str) -> list[SourceEntry]:
    """The enabled `Types: deb` entries of a .sources file (sources.list(5), DEB822 format)."""
    entries = []
    # Deb822 looks field names up case-insensitively, as apt does, and drops '#' comment
    # lines; a value continued over several lines still splits on whitespace.
    for stanza in Deb822.iter_paragraphs(text, use_apt_pkg=False):
        if "deb" not in stanza.get("Types", "").split():
            continue
        if stanza.get("Enabled", "yes").lower() == "no":
            continue
        for uri in stanza.get("URIs", "").split():
            for suite in stanza.get("Suites", "").split():
                entries.append(SourceEntry(uri.rstrip("/"), suite))
    return entries


def host_entries(etc_apt: Path = Path("/etc/apt")) -> list[SourceEntry]:
    entries: list[SourceEntry] = []
    main_list = etc_apt / "sources.list"
    if main_list.is_file():
        entries += parse_one_line(main_list.read_text(errors="replace"))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                entries += parse_one_line(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                entries += parse_deb822(path.read_text(errors="replace"))
    return entries


def _is_debian_suite(suite: str) -> bool:
    return suite.split("-", 1)[0] in _DEBIAN_CODENAMES


def choose_mirror(entries: list[SourceEntry], origin: str = "/etc/apt") -> Mirror:
    """The host's Debian archive and security URLs; deb.debian.org for what the host lacks."""
    archive = security = None
    for entry in entries:
        if not _is_debian_suite(entry.suite):
            continue
        if entry.suite.endswith("-security") or entry.suite.endswith("/updates"):
            security = security or entry.uri
        else:
            archive = archive or entry.uri
    if archive is None:
        return Mirror(DEFAULT_ARCHIVE, security or DEFAULT_SECURITY, "default (no Debian source)")
    return Mirror(archive, security or DEFAULT_SECURITY, origin)


def host_mirror(etc_apt: Path = Path("/etc/apt")) -> Mirror:
    """The mirror to use: $UFFDHARNESS_DEBIAN_MIRROR if set, else what the host's apt uses."""
    override = os.environ.get("UFFDHARNESS_DEBIAN_MIRROR")
    if override:
        security = os.environ.get("UFFDHARNESS_DEBIAN_SECURITY_MIRROR", DEFAULT_SECURITY)
        return Mirror(override.rstrip("/"), security.rstrip("/"), "$UFFDHARNESS_DEBIAN_MIRROR")
    return choose_mirror(host_entries(etc_apt), str(etc_apt))
