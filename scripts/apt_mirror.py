#!/usr/bin/env python3
"""Print the URI of the Debian mirror this machine's apt uses for one suite.

The image builds must use the same mirror as the host (no other package host is reachable, and
none may be written into the repository), so it is read from the host's own apt sources at build
time: deb822 files (/etc/apt/sources.list.d/*.sources) first, then one-line sources.list files.

Usage: apt_mirror.py SUITE [SOURCES_ROOT]   (exit 1 when no enabled `deb` source serves SUITE)
"""

from __future__ import annotations

import glob
import os
import sys


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    """Split a deb822 file into stanzas of lower-cased field -> value (continuations joined)."""
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    last_field = None
    for raw_line in text.splitlines():
        if raw_line.startswith("#"):
            continue
        if not raw_line.strip():
            if fields:
                stanzas.append(fields)
            fields, last_field = {}, None
            continue
        if raw_line[0] in " \t" and last_field:
            fields[last_field] += " " + raw_line.strip()
            continue
        name, sep, value = raw_line.partition(":")
        if not sep:
            continue
        last_field = name.strip().lower()
        fields[last_field] = value.strip()
    if fields:
        stanzas.append(fields)
    return stanzas


def _usable(uri: str) -> bool:
    # A file: or cdrom: source on the host cannot serve a container build.
    return uri.startswith(("http://", "https://"))


def mirrors_from_deb822(text: str, suite: str) -> list[str]:
    uris = []
    for stanza in _deb822_stanzas(text):
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in stanza.get("types", "").split():
            continue
        if suite not in stanza.get("suites", "").split():
            continue
        uris.extend(uri for uri in stanza.get("uris", "").split() if _usable(uri))
    return uris


def mirrors_from_one_line(text: str, suite: str) -> list[str]:
    uris = []
    for raw_line in text.splitlines():
        words = raw_line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            # Options such as [arch=amd64 signed-by=...] may span several words.
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and words[1] == suite and _usable(words[0]):
            uris.append(words[0])
    return uris


def find_mirror(suite: str, root: str = "/") -> str | None:
    apt_dir = os.path.join(root, "etc/apt")
    for path in sorted(glob.glob(os.path.join(apt_dir, "sources.list.d/*.sources"))):
        with open(path, encoding="utf-8", errors="replace") as handle:
            uris = mirrors_from_deb822(handle.read(), suite)
        if uris:
            return uris[0]
    one_line_files = [os.path.join(apt_dir, "sources.list")]
    one_line_files += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d/*.list")))
    for path in one_line_files:
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            uris = mirrors_from_one_line(handle.read(), suite)
        if uris:
            return uris[0]
    return None


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    mirror = find_mirror(argv[1], argv[2] if len(argv) == 3 else "/")
    if mirror is None:
        print(f"no enabled http(s) apt source for suite {argv[1]!r}", file=sys.stderr)
        return 1
    print(mirror.rstrip("/"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
