"""Find the Debian mirror the host's apt already uses, so the private apt setup reuses it.

Reads /etc/apt/sources.list, sources.list.d/*.list (one-line format) and *.sources (deb822);
files with any other suffix (e.g. `*.disabled`) are ignored, as apt ignores them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

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
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
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
