"""Aliases of a name's versions, for `ArtefactStore`: `aliases/<alias>` holds a version string.

An alias file is replaced atomically (a temporary file moved onto it), so a reader sees the
old target or the new one. `latest` is special: it always means the newest committed version.
Its file is kept pointing there by every writer (publish, delete, gc), but a reader does not
trust it: a publish killed between its commit and its alias move, or a delete killed before
moving `latest`, leaves the file behind the truth, so resolving `latest` looks for the newest
committed version itself (two listings and, usually, one file check).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from embedpipe.artefacts.files import (
    ArtefactError,
    entry_names,
    validate_name,
    write_atomic,
)
from embedpipe.artefacts.layout import (
    ALIASES,
    CLAIMS,
    LATEST,
    format_version,
    is_version_like,
    version_number,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


class Aliases:
    """Setting, listing and repairing aliases; mixed into ArtefactStore."""

    if TYPE_CHECKING:  # provided by ArtefactStore
        fs: AbstractFileSystem

        def _path(self, *parts: str) -> str: ...
        def _version_of(self, name: str, version: str | int) -> str: ...
        def _committed(self, name: str, version: str) -> bool: ...

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point `alias` of `name` at an existing version (atomically replacing any old target).

        `latest` is kept by the store at the newest version: it can be set only to that one.
        """
        validate_name(name)
        self._check_alias(alias)
        target = self._version_of(name, version)
        if alias == LATEST and target != self.newest(name):
            raise ArtefactError(
                f"cannot point {LATEST!r} of {name!r} at {target}: {LATEST!r} always names the "
                f"newest version ({self.newest(name)}); use another alias to pin an older one"
            )
        self._write_alias(name, alias, target)

    def _write_alias(self, name: str, alias: str, version: str) -> None:
        write_atomic(
            self.fs, self._path(name, ALIASES, alias), (version + "\n").encode(),
            point="alias.written",
        )  # fmt: skip

    @staticmethod
    def _check_alias(alias: str) -> str:
        """Validate an alias like a name; also refuse version-like aliases ('v3', '3')."""
        validate_name(alias, "alias")
        if is_version_like(alias):
            raise ArtefactError(f"invalid alias {alias!r}: it looks like a version")
        return alias

    def _alias_file(self, name: str, alias: str) -> str | None:
        """The content of alias file `alias` (stripped), None when there is none."""
        try:
            return self.fs.cat_file(self._path(name, ALIASES, alias)).decode().strip()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def aliases(self, name: str) -> dict[str, str]:
        """{alias: version} for `name`; `latest` is the newest committed version (absent when
        there is none), whatever its file says."""
        found = self._pinned(name)
        newest = self.newest(name)
        if newest is not None:
            found[LATEST] = newest
        return dict(sorted(found.items()))

    def _pinned(self, name: str) -> dict[str, str]:
        """{alias: version} of the aliases but `latest`, as their files say."""
        directory = self._path(validate_name(name), ALIASES)
        found = {}
        for alias in sorted(entry_names(self.fs, directory)):
            if alias.startswith(".") or alias == LATEST:
                continue  # temporary files of alias moves, and latest
            target = self._alias_file(name, alias)
            if target is not None:
                found[alias] = target
        return found

    def newest(self, name: str) -> str | None:
        """The newest committed version of `name` ('v0007'), None when it has none.

        A committed version was claimed first, so the claims and the version directories
        list every candidate; they are checked newest first. When none is committed, the
        listing is taken again: versions committed (and older ones deleted) while the first
        was checked are then found.
        """
        seen: set[int] = set()
        while True:
            numbers = set()
            for directory in ((), (CLAIMS,)):
                for entry in entry_names(self.fs, self._path(validate_name(name), *directory)):
                    n = version_number(entry)
                    if n is not None and entry == format_version(n):
                        numbers.add(n)
            for n in sorted(numbers, reverse=True):
                if self._committed(name, format_version(n)):
                    return format_version(n)
            if numbers <= seen:
                return None
            seen |= numbers

    def _repair_latest(self, name: str) -> None:
        """Make the `latest` file name the newest committed version (remove it when there is
        none), re-checking so a racing writer cannot leave it at an older one: the last writer
        always saw every version committed before it."""
        while True:
            newest = self.newest(name)
            if self._alias_file(name, LATEST) != newest:
                if newest is None:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(self._path(name, ALIASES, LATEST))
                else:
                    self._write_alias(name, LATEST, newest)
            if self.newest(name) == newest:
                return
