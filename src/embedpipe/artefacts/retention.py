"""Removing versions: `delete` of one version and `gc` (retention), for `ArtefactStore`.

A delete reverses a publish: a tombstone first (so the number is never handed out again),
then the manifest (the version disappears in one step), then its files. `gc` also removes
what interrupted operations left behind.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from embedpipe.artefacts.files import (
    ArtefactError,
    entry_names,
    utc_now,
    validate_name,
    write_atomic,
)
from embedpipe.artefacts.layout import (
    ALIASES,
    CLAIMS,
    DELETING_PREFIX,
    LATEST,
    TOMBSTONES,
    is_version_like,
    version_number,
)
from embedpipe.artefacts.manifest import MANIFEST

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

ABANDONED_AFTER = 24 * 3600.0  # seconds after which gc removes a claimed, uncommitted version


class Retention:
    """Deleting versions; mixed into ArtefactStore, whose layout and aliases it uses."""

    if TYPE_CHECKING:  # provided by ArtefactStore
        fs: AbstractFileSystem

        def _path(self, *parts: str) -> str: ...
        def _version_of(self, name: str, version: str | int) -> str: ...
        def _advance_latest(self, name: str) -> None: ...
        def versions(self, name: str) -> list[str]: ...
        def aliases(self, name: str) -> dict[str, str]: ...

    def delete(self, name: str, version: str | int, force: bool = False) -> list[str]:
        """Delete one version of `name`; return the aliases that pointed at it.

        `version` must be a version ('v0003', '3' or 3), not an alias, so an alias can never
        delete more than the caller named. A version that any alias names (`latest`
        included) is refused with ArtefactError naming the aliases, unless `force`: then the
        aliases are removed and `latest` moves to the newest remaining version (or is removed
        with the last one). The number stays claimed, so no later publish reuses it.
        """
        validate_name(name)
        if isinstance(version, str) and not is_version_like(version):
            raise ArtefactError(
                f"delete takes a version of {name!r} such as 'v0003', not the alias "
                f"{version!r}: resolve it first"
            )
        target = self._version_of(name, version)
        pointing = sorted(a for a, v in self.aliases(name).items() if v == target)
        if pointing and not force:
            raise ArtefactError(
                f"cannot delete {name} {target}: alias(es) {', '.join(pointing)} point at it "
                "(move them, or pass force=True to remove them too)"
            )
        for alias in pointing:
            if alias != LATEST:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self._path(name, ALIASES, alias))
        tombstone = json.dumps({"deleted": utc_now()}) + "\n"
        write_atomic(self.fs, self._path(name, TOMBSTONES, target), tombstone.encode())
        directory = self._path(name, target)
        # The manifest first: the version disappears in one step, then its files go.
        self.fs.rm_file(f"{directory}/{MANIFEST}")
        if LATEST in pointing or self.aliases(name).get(LATEST) == target:
            if self.versions(name):
                self._advance_latest(name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self._path(name, ALIASES, LATEST))
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(directory, recursive=True)
        return pointing

    def gc(self, name: str, keep: int, abandoned_after: float = ABANDONED_AFTER) -> list[str]:
        """Delete all but the newest `keep` versions of `name`, sparing any an alias names.

        Returns the deleted versions, oldest first. Also removes what interrupted operations
        left: uncommitted version directories of deletes, and of publishes whose claim is older
        than `abandoned_after` seconds (a younger one may still be being written).
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ArtefactError(f"keep must be an integer >= 0, got {keep!r}")
        versions = self.versions(name)
        kept = set(versions[len(versions) - keep :]) if keep else set()
        aliased = set(self.aliases(name).values())
        deleted = []
        for version in versions:
            if version not in kept and version not in aliased:
                try:
                    self.delete(name, version)
                except ArtefactError:
                    continue  # deleted or aliased by someone else meanwhile: leave it be
                deleted.append(version)
        self._remove_leftovers(name, abandoned_after)
        return deleted

    def _remove_leftovers(self, name: str, abandoned_after: float) -> None:
        committed = set(self.versions(name))
        tombstones = set(entry_names(self.fs, self._path(name, TOMBSTONES)))
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=abandoned_after)
        for entry in entry_names(self.fs, self._path(name)):
            path = self._path(name, entry)
            if entry.startswith(DELETING_PREFIX):
                stale = True
            elif version_number(entry) is not None and entry not in committed:
                stale = entry in tombstones or self._claimed_before(name, entry, cutoff)
            else:
                stale = False
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(path, recursive=True)

    def _claimed_before(self, name: str, version: str, cutoff: datetime) -> bool:
        """True when `version` was claimed (by this store's publish) before `cutoff`."""
        try:
            record = json.loads(self.fs.cat_file(self._path(name, CLAIMS, version)))
            return datetime.fromisoformat(record["claimed"]) < cutoff
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return False  # not claimed by a publish of ours: not ours to remove
