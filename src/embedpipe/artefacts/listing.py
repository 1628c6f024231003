"""Reading a store's layout, for `ArtefactStore`: the committed versions of a name, the names,
and what a version string, number or alias names."""

from __future__ import annotations

import contextlib
import posixpath
from typing import TYPE_CHECKING

from embedpipe.artefacts.files import (
    ArtefactError,
    ArtefactPathError,
    Location,
    VersionGoneError,
    entry_names,
    is_link,
    join,
    validate_name,
)
from embedpipe.artefacts.integrity import read_manifest
from embedpipe.artefacts.layout import (
    ALIASES,
    LATEST,
    format_version,
    is_number,
    version_number,
)
from embedpipe.artefacts.manifest import MANIFEST, Manifest

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


class Listing:
    """Listing and resolving versions; mixed into ArtefactStore."""

    if TYPE_CHECKING:  # provided by ArtefactStore and the Aliases mixin
        fs: AbstractFileSystem
        root: Location
        _root: str

        def _path(self, *parts: str) -> str: ...
        def location(self, name: str, version: str) -> Location: ...
        def newest(self, name: str) -> str | None: ...
        def aliases(self, name: str) -> dict[str, str]: ...
        def _alias_file(self, name: str, alias: str) -> str | None: ...
        @staticmethod
        def _check_alias(alias: str) -> str: ...

    def versions(self, name: str) -> list[str]:
        """The committed versions of `name` (those with a manifest), oldest first.

        A version directory that is a symbolic link is not a version of this store (it is
        not listed; naming it raises ArtefactPathError).
        """
        base = self._name_dir(name)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, maxdepth=2, withdirs=False)
        except FileNotFoundError:
            return []
        numbers = []
        for path in found:
            parts = posixpath.relpath(path, base).split("/")
            if len(parts) == 2 and parts[1] == MANIFEST:
                n = version_number(parts[0])
                if n is not None and parts[0] == format_version(n):
                    numbers.append(n)
        return [format_version(n) for n in sorted(numbers)]

    def _name_dir(self, name: str) -> str:
        """The directory of `name`, refusing one that is a symbolic link."""
        base = self._path(validate_name(name))
        if is_link(self.fs, base):
            raise ArtefactPathError(
                f"{join(self.root, name)} is a symbolic link: artefact names must be "
                "directories inside the store (refusing to follow it)"
            )
        return base

    def _committed(self, name: str, version: str) -> bool:
        """True when `version` of `name` has its manifest (and is not a symbolic link)."""
        directory = self._path(name, version)
        self.fs.invalidate_cache(directory)
        return self.fs.isfile(f"{directory}/{MANIFEST}") and not is_link(self.fs, directory)

    def names(self) -> list[str]:
        """The artefact names with at least one committed version, sorted."""
        found = []
        for entry in entry_names(self.fs, self._root):
            with contextlib.suppress(ArtefactError):
                if self.versions(validate_name(entry)):
                    found.append(entry)
        return sorted(found)

    def manifests(self, name: str) -> list[Manifest]:
        """The manifests of every committed version of `name`, oldest first (the history a
        report compares a version with); a version deleted meanwhile is left out."""
        found = []
        for v in self.versions(name):
            with contextlib.suppress(VersionGoneError):
                found.append(read_manifest(self.location(name, v)))
        return found

    def resolve(self, name: str, version: str | int = LATEST) -> Location:
        """The location of a version of `name`: 'latest', an alias, 'v0003', '3' or 3."""
        return self.location(name, self._version_of(name, version))

    def _version_of(self, name: str, version: str | int) -> str:
        """The committed version string ('v0003') that `version` names, else ArtefactError.

        `latest` is the newest committed version (its alias file may lag behind, see
        `aliases.py`).
        """
        base = self._name_dir(name)
        if not self.fs.isdir(base):
            raise ArtefactError(f"no artefact named {name!r} in store {self.root}")
        if isinstance(version, bool):
            raise ArtefactError(f"invalid version {version!r} for artefact {name!r}")
        if isinstance(version, int) or (isinstance(version, str) and is_number(version)):
            version = format_version(int(version))
        if not isinstance(version, str) or not version:
            raise ArtefactError(f"invalid version {version!r} for artefact {name!r}")
        if version == LATEST:
            newest = self.newest(name)
            if newest is None:
                raise ArtefactError(
                    f"artefact {name!r} has no alias {LATEST!r} in store {self.root}: "
                    "it has no committed version"
                )
            return newest
        n = version_number(version)
        if n is None:
            target = self._alias_file(name, self._check_alias(version))
            if target is None:
                raise ArtefactError(
                    f"artefact {name!r} has no alias {version!r} in store {self.root} "
                    f"(aliases: {sorted(self.aliases(name)) or 'none'})"
                )
            n = version_number(target)
            if n is None:
                raise ArtefactError(
                    f"alias file {join(self.root, name, ALIASES, version)} holds no version: "
                    f"{target!r}"
                )
        version = format_version(n)
        if is_link(self.fs, f"{base}/{version}"):
            raise ArtefactPathError(
                f"{self.location(name, version)} is a symbolic link: version directories must "
                "be directories inside the store (refusing to follow it)"
            )
        if not self._committed(name, version):
            raise ArtefactError(
                f"artefact {name!r} has no version {version} in store {self.root} "
                f"(versions: {self.versions(name) or 'none'})"
            )
        return version
