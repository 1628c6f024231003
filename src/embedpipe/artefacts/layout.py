"""Names in the store's layout (described in `embedpipe.artefacts.store`) and version strings."""

from __future__ import annotations

import re

ALIASES = "aliases"
LATEST = "latest"
CLAIMS = ".claims"
TOMBSTONES = ".deleted"
DELETING_PREFIX = ".deleting-"  # left by interrupted deletes of earlier releases

_VERSION_RE = re.compile(r"v([0-9]+)")
_NUMBER_RE = re.compile(r"[0-9]+")


def format_version(n: int) -> str:
    """The directory name of version number n: 3 -> 'v0003'."""
    return f"v{n:04d}"


def version_number(s: str) -> int | None:
    """The number of a version string 'v0003' (or 'v3'), None if it is not one."""
    m = _VERSION_RE.fullmatch(s)
    return int(m.group(1)) if m else None


def is_number(text: str) -> bool:
    """True for a plain version number such as '3' (as the CLI passes it)."""
    return _NUMBER_RE.fullmatch(text) is not None


def is_version_like(text: str) -> bool:
    """True for 'v0003', 'v3' or '3': what names a version rather than an alias."""
    return version_number(text) is not None or is_number(text)
