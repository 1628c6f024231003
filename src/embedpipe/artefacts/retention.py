"""Removing versions: `delete` of one version and `gc` (retention), for `ArtefactStore`.

A delete reverses a publish: a tombstone first (so the number is never handed out again),
then the manifest (the version disappears in one step), then its files. Concurrent deletes
and gcs of one name are safe: a version another one removed first counts as removed.

Readers are given a grace period: `gc` (and so `keep`) deletes a version only once it has
been superseded (the next committed version was created) for `grace` seconds, so a reader
that resolved `latest` just before a publish can still read it. An explicit `delete` is
immediate; a reader caught by one gets `VersionGoneError` (retryable: resolve again).

`gc` also removes what interrupted operations left: version directories of deletes
(tombstoned) and of publishes that will never commit (their claimant is dead, or claimed
more than `abandoned_after` seconds ago), and temporary files of alias moves and of
tombstones older than the grace period (and than `TEMPORARY_AGE`). Each publish does this
cleaning too.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from embedpipe.artefacts.claims import PROBE_PREFIX
from embedpipe.artefacts.files import (
    TMP_PREFIX,
    ArtefactError,
    entry_names,
    is_link,
    modified_before,
    remove_tree,
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
from embedpipe.faults import crash_point

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

ABANDONED_AFTER = 24 * 3600.0  # seconds after which gc removes a claimed, uncommitted version
GRACE = 600.0  # seconds a superseded version stays readable before gc may delete it
# Seconds under which a temporary file is never removed, whatever the grace period: another
# writer may be about to move it into place (it lives milliseconds unless its writer died).
TEMPORARY_AGE = 60.0


def check_seconds(value: object, what: str) -> float:
    """`value` as a number of seconds >= 0, else ArtefactError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ArtefactError(f"{what} must be a number of seconds >= 0, got {value!r}")
    return float(value)


class Retention:
    """Deleting versions; mixed into ArtefactStore, whose layout and aliases it uses."""

    if TYPE_CHECKING:  # provided by ArtefactStore
        fs: AbstractFileSystem
        grace: float

        def _path(self, *parts: str) -> str: ...
        def _version_of(self, name: str, version: str | int) -> str: ...
        def _repair_latest(self, name: str) -> None: ...
        def _committed(self, name: str, version: str) -> bool: ...
        def _alias_file(self, name: str, alias: str) -> str | None: ...
        def _pinned(self, name: str) -> dict[str, str]: ...
        def _abandoned(self, name: str, version: str, cutoff: datetime) -> bool: ...
        def versions(self, name: str) -> list[str]: ...
        def aliases(self, name: str) -> dict[str, str]: ...

    def delete(self, name: str, version: str | int, force: bool = False) -> list[str]:
        """Delete one version of `name`; return the aliases that pointed at it.

        `version` must be a version ('v0003', '3' or 3), not an alias, so an alias can never
        delete more than the caller named. A version that any alias names (`latest`
        included) is refused with ArtefactError naming the aliases, unless `force`: then the
        aliases are removed and `latest` moves to the newest remaining version (or is removed
        with the last one). The number stays claimed, so no later publish reuses it. A version
        that a concurrent delete or gc removes first counts as deleted.
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
        self._remove(name, target, pointing)
        return pointing

    def _remove(self, name: str, target: str, aliases: list[str]) -> bool:
        """Remove version `target` and the `aliases` (but latest) still naming it; move
        latest. False when another process removed the version first."""
        for alias in aliases:
            if alias != LATEST and self._alias_file(name, alias) == target:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self._path(name, ALIASES, alias))
        tombstone = json.dumps({"deleted": utc_now()}) + "\n"
        write_atomic(
            self.fs, self._path(name, TOMBSTONES, target), tombstone.encode(),
            point="delete.tombstone-written",
        )  # fmt: skip
        crash_point("delete.tombstoned")
        directory = self._path(name, target)
        # The manifest first: the version disappears in one step, then its files go.
        try:
            self.fs.rm_file(f"{directory}/{MANIFEST}")
            removed = True
        except FileNotFoundError:
            removed = False  # a concurrent delete or gc was first: the outcome is the same
        crash_point("delete.unlinked")
        if LATEST in aliases or self._alias_file(name, LATEST) == target:
            self._repair_latest(name)
        crash_point("delete.moved")
        remove_tree(self.fs, directory)
        return removed

    def gc(
        self,
        name: str,
        keep: int,
        abandoned_after: float = ABANDONED_AFTER,
        grace: float | None = None,
    ) -> list[str]:
        """Delete all but the newest `keep` versions of `name`, sparing any an alias names and
        any superseded less than `grace` seconds ago (default: the store's `grace`).

        Returns the versions this call deleted, oldest first (a concurrent gc may delete
        others). Also removes what interrupted operations left (see the module).
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ArtefactError(f"keep must be an integer >= 0, got {keep!r}")
        grace = self.grace if grace is None else check_seconds(grace, "grace")
        check_seconds(abandoned_after, "abandoned_after")
        self._repair_latest(name)
        versions = self.versions(name)
        kept = set(versions[len(versions) - keep :]) if keep else set()
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=grace)
        deleted = []
        for version, successor in zip(versions, versions[1:], strict=False):
            if version in kept:
                continue
            if grace > 0 and not self._superseded_before(name, successor, cutoff):
                continue  # a reader may have resolved it as latest moments ago
            if version in self._pinned(name).values():
                continue  # aliased, possibly meanwhile (latest is newer: never a candidate)
            if self._remove(name, version, []):
                deleted.append(version)
            crash_point("gc.deleted")
        self._remove_leftovers(name, abandoned_after, grace)
        return deleted

    def _superseded_before(self, name: str, successor: str, cutoff: datetime) -> bool:
        """True when `successor` (the version after another) was created before `cutoff`;
        False when that cannot be read (gone meanwhile, or foreign): keep the older one."""
        try:
            data = json.loads(self.fs.cat_file(self._path(name, successor, MANIFEST)))
            created = datetime.fromisoformat(data["created"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        return created < cutoff

    def _remove_leftovers(self, name: str, abandoned_after: float, grace: float) -> None:
        """Remove what interrupted deletes, publishes and alias moves of `name` left."""
        now = datetime.now(timezone.utc)
        abandoned = now - timedelta(seconds=abandoned_after)
        temporary = now - timedelta(seconds=max(grace, TEMPORARY_AGE))
        committed = set(self.versions(name))
        tombstones = set(entry_names(self.fs, self._path(name, TOMBSTONES)))
        for entry in entry_names(self.fs, self._path(name)):
            path = self._path(name, entry)
            if entry.startswith(DELETING_PREFIX):
                stale = True  # left by interrupted deletes of earlier releases
            elif entry.startswith(TMP_PREFIX):
                stale = modified_before(self.fs, path, temporary)
            elif version_number(entry) is not None and entry not in committed:
                stale = not is_link(self.fs, path) and (
                    entry in tombstones or self._abandoned(name, entry, abandoned)
                )
                stale = stale and not self._committed(name, entry)  # committed meanwhile
            else:
                stale = False
            if stale:
                remove_tree(self.fs, path)
        for directory in (ALIASES, TOMBSTONES, CLAIMS):
            for entry in entry_names(self.fs, self._path(name, directory)):
                path = self._path(name, directory, entry)
                if entry.startswith((TMP_PREFIX, PROBE_PREFIX)) and modified_before(
                    self.fs, path, temporary
                ):
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(path)
