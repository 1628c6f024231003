"""A versioned, content-hashed artefact store on a local path or any fsspec URL.

Layout, the same on every filesystem (local path, ``file://``, ``memory://``, ``s3://``,
``gs://``, ``az://`` ...)::

    <root>/<name>/v0001/              one immutable version: files + manifest.json
    <root>/<name>/aliases/latest      a text file holding a version string ("v0002")
    <root>/<name>/.claims/v0001       who claimed version number 1 and when; never removed
    <root>/<name>/.deleted/v0001      a tombstone: version 1 was deleted

One code path serves every filesystem, through fsspec (its local filesystem for plain paths).
Object stores have no rename, so a publish does not rename a directory into place; it

1. claims the next number by creating ``.claims/vNNNN`` exclusively (open mode ``"xb"``): of
   two publishers racing for a number exactly one succeeds, the other takes the next number.
   Claims are never removed, so a number is handed out once, even after its version is deleted;
2. writes the files into ``vNNNN/``, which only its claimant writes and which readers ignore
   while it has no manifest;
3. writes ``manifest.json`` last, to a temporary name moved onto the final one: the manifest
   is the commit marker, and a version exists exactly when its manifest does.

Aliases are small files replaced the same way (temporary file, then move); `latest` always
means the newest committed version, whatever its file says (see `aliases.py`). Deletion
reverses a publish: tombstone, then the manifest (the version disappears at once), then the
rest; `gc` spares versions superseded less than a grace period ago, so readers of a version
they resolved as `latest` are not cut off (see `retention.py`).

A process killed anywhere in a publish, an alias move, a delete or a gc leaves no partial
version: what it left is invisible to readers and removed by the next publish or gc (the
fault-injection suite, tests/artefacts/test_store_faults.py, kills at every commit point).
Errors after a publish's commit (moving `latest`, retention) are warnings, not exceptions:
the version is published, and a caller that retried would publish it twice.

Artefact files and version directories must be regular files and directories inside the
store: a symbolic link is refused (`ArtefactPathError`) rather than followed.

What each backend guarantees:

* local paths and ``file://``: claims use ``O_CREAT|O_EXCL`` and moves are ``rename(2)``, both
  atomic between processes (and between hosts on a POSIX-conforming shared filesystem);
  published files are made read-only (0444);
* ``s3://`` (s3fs 2025.7 or later), ``gs://`` (gcsfs) and ``az://`` (adlfs 2024.12 or later):
  ``"xb"`` is a conditional create (``If-None-Match: *``, ``ifGenerationMatch=0``,
  ``overwrite=False``), atomic on the service; a move is a server-side copy then a delete, and
  a single object appears whole, so readers see the old alias or the new one, never a mix.
  Listings on S3, GCS and Azure are strongly consistent, so a committed version is seen at
  once. (An S3-compatible store without conditional writes is the next case.)
* a filesystem that ignores exclusive creation: the store finds out with a probe on its first
  publish and warns; one publisher at a time is then safe, racing publishers of one name are
  not;
* ``memory://``: one process; it is for tests.

Where things are: the manifest schema in `manifest.py`; reading and verifying a version in
`integrity.py`; listing and resolving versions in `listing.py`; claims in `claims.py`;
aliases in `aliases.py`; deletion and retention in `retention.py`; filesystem helpers in
`files.py`; where the store is in `store_root` below.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import warnings
from collections.abc import Mapping
from typing import Any

from fsspec import AbstractFileSystem

from embedpipe.artefacts import retention
from embedpipe.artefacts.aliases import Aliases
from embedpipe.artefacts.claims import Claims
from embedpipe.artefacts.files import (
    BLOCK,
    ArtefactError,
    Location,
    as_location,
    filesystem,
    join,
    make_read_only,
    relative_name,
    remove_tree,
    sha256_of,
    sync,
    utc_now,
    validate_name,
    write_atomic,
)
from embedpipe.artefacts.integrity import read_manifest
from embedpipe.artefacts.layout import LATEST
from embedpipe.artefacts.listing import Listing
from embedpipe.artefacts.manifest import IDENTITY, MANIFEST, Manifest, parse_details
from embedpipe.artefacts.retention import ABANDONED_AFTER, Retention, check_seconds
from embedpipe.faults import crash_point

STORE_ENV = "EMBEDPIPE_STORE"
DEFAULT_STORE = "artefacts"


def store_root(store: str | os.PathLike[str] | None = None) -> Location:
    """Where the store is: `store` when given, else $EMBEDPIPE_STORE, else ./artefacts.

    The one place that decides it: `RunConfig.store` (None means this default), the CLI's
    `--store` and `load(..., store=None)` all go through here.
    """
    if store is not None and os.fspath(store) != "":
        return as_location(store)
    return as_location(os.environ.get(STORE_ENV) or DEFAULT_STORE)


def open_store(store: str | os.PathLike[str] | ArtefactStore | None = None) -> ArtefactStore:
    """The ArtefactStore at `store_root(store)`; an ArtefactStore given is returned as is."""
    if isinstance(store, ArtefactStore):
        return store
    return ArtefactStore(store_root(store))


class ArtefactStore(Listing, Claims, Aliases, Retention):
    """Immutable numbered versions of named artefacts under one root (a path or fsspec URL).

    Locations are handed back in the form the root was given: Paths for a path, URL strings
    for a URL. With `keep`, every publish is followed by `gc(name, keep)`: the newest `keep`
    versions and every aliased one stay (retention). `grace` (seconds, default
    `retention.GRACE`): how long `gc` leaves a superseded version readable, and how old a
    temporary file must be before gc removes it.
    """

    def __init__(
        self, root: str | os.PathLike[str], keep: int | None = None, grace: float | None = None
    ) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ArtefactError(f"keep must be an integer >= 1 or None, got {keep!r}")
        self.keep = keep
        self.grace = check_seconds(retention.GRACE if grace is None else grace, "grace")
        self.root: Location = as_location(root)
        self.fs, self._root = filesystem(self.root)
        self._root = self._root.rstrip("/") or "/"
        self._exclusive: bool | None = None  # does the filesystem honour "xb"? probed lazily

    def __repr__(self) -> str:
        return f"ArtefactStore({str(self.root)!r})"

    def _path(self, *parts: str) -> str:
        """The filesystem path of root/parts."""
        return "/".join([self._root.rstrip("/"), *parts]) if parts else self._root

    def location(self, name: str, version: str) -> Location:
        """Where version `version` of `name` lives, as a Path or URL."""
        return join(self.root, validate_name(name), version)

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self,
        name: str,
        files: Mapping[str, str | os.PathLike[str]],
        details: Mapping[str, Any],
        skip_unchanged: bool = False,
    ) -> Location:
        """Copy `files` ({relative name: source path or URL}) into the next version of `name`.

        `details` is the manifest's content (`manifest_details(...)`, or any JSON object for
        artefacts of other tools): it is checked as a `Manifest` before anything is claimed.
        The store adds name, version, created (UTC) and the sha256/size of every file, writes
        the manifest last as the commit marker and moves `latest` to the newest version.
        Returns the version's location. Safe against concurrent publishers (see the module).
        A version that fails half-way is removed; its number stays claimed.

        `skip_unchanged`: when the newest version already holds exactly these files (by
        sha256) and details, return it instead of publishing a copy (after moving `latest` and
        applying retention, as its own publish would have), so a publish rerun after one
        killed past its commit does not publish twice. The sources are hashed first.
        """
        validate_name(name)
        self._check_details(name, details)
        sources = self._sources(name, files)
        if skip_unchanged and (same := self._unchanged(name, sources, details)) is not None:
            self._after_publish(name, same)  # what the earlier publish may not have finished
            return self.location(name, same)
        base = self._path(name)
        self.fs.makedirs(base, exist_ok=True)
        version = self._claim(name)
        crash_point("publish.claimed")
        directory = f"{base}/{version}"
        try:
            table = {key: self._copy(fs, path, f"{directory}/{key}") for key, (fs, path) in
                     sources.items()}  # fmt: skip
            crash_point("publish.copied")
            text = self._manifest_text(name, version, details, table)
            write_atomic(
                self.fs, f"{directory}/{MANIFEST}", text.encode(), read_only=True,
                point="publish.manifest-written",
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(self.fs, directory)
            raise
        crash_point("publish.committed")
        self._after_publish(name, version)
        return self.location(name, version)

    def _manifest_text(
        self, name: str, version: str, details: Mapping[str, Any], table: dict[str, Any]
    ) -> str:
        """The manifest.json of a version: `details` plus the identity the store sets."""
        identity = {"name": name, "version": version, "created": utc_now(), "files": table}
        where = str(join(self.root, name, version, MANIFEST))
        manifest = Manifest.from_json({**details, **identity}, where)
        return json.dumps(manifest.to_json(), sort_keys=True, indent=2) + "\n"

    def _after_publish(self, name: str, version: str) -> None:
        """Move `latest`, apply retention and clean leftovers, after `version`'s commit.

        The version is published whatever happens here, so a failure is a warning: raising
        would make a caller that retries publish it twice. The next publish or gc redoes it.
        """
        try:
            self._repair_latest(name)
            crash_point("publish.aliased")
            if self.keep is not None:
                self.gc(name, self.keep)
            else:
                self._remove_leftovers(name, ABANDONED_AFTER, self.grace)
        except Exception as e:
            warnings.warn(
                f"{name} {version} is published, but moving {LATEST!r} or cleaning up after it "
                f"failed ({type(e).__name__}: {e}); the next publish or gc of {name!r} retries",
                RuntimeWarning,
                stacklevel=3,
            )

    def _unchanged(
        self,
        name: str,
        sources: Mapping[str, tuple[AbstractFileSystem, str]],
        details: Mapping[str, Any],
    ) -> str | None:
        """The newest version of `name` when it holds exactly `sources` and `details`."""
        newest = self.newest(name)
        if newest is None:
            return None
        try:
            old = read_manifest(self.location(name, newest)).to_json()
        except ArtefactError:
            return None
        files = old.get("files", {})
        if set(files) != set(sources):
            return None
        for key, (fs, path) in sources.items():
            if fs.size(path) != files[key]["bytes"]:
                return None
        new = json.loads(self._manifest_text(name, newest, details, files))
        if {**new, "created": None} != {**old, "created": None}:
            return None  # other details
        for key, (fs, path) in sources.items():
            if sha256_of(fs, path) != files[key]["sha256"]:
                return None
        return newest

    def _check_details(self, name: str, details: Mapping[str, Any]) -> None:
        """Refuse manifest content that is not JSON, sets what the store sets, or mistypes a
        field of the manifest schema."""
        where = f"manifest for {name!r}"
        try:
            json.dumps(details, allow_nan=True)
        except (TypeError, ValueError) as e:
            raise ArtefactError(f"{where} is not JSON-serialisable: {e}") from e
        reserved = sorted(set(details) & set(IDENTITY))
        if reserved:
            raise ArtefactError(f"{where}: {', '.join(reserved)} are set by the store")
        parse_details(details, where)

    def _sources(
        self, name: str, files: Mapping[str, str | os.PathLike[str]]
    ) -> dict[str, tuple[AbstractFileSystem, str]]:
        """{relative name: (filesystem, path)} of the files to publish, each checked."""
        sources: dict[str, tuple[AbstractFileSystem, str]] = {}
        for relname, src in files.items():
            key = relative_name(relname, join(self.root, name))
            if key == MANIFEST:
                raise ArtefactError(f"cannot publish a file named {MANIFEST}: it is reserved")
            if key in sources:
                raise ArtefactError(f"file {relname!r} given twice for {name!r}")
            src_fs, src_path = filesystem(src)
            if not src_fs.isfile(src_path):
                raise ArtefactError(f"cannot publish {name!r}: source file {src} not found")
            sources[key] = (src_fs, src_path)
        return sources

    def _copy(self, src_fs: AbstractFileSystem, src: str, dst: str) -> dict[str, Any]:
        """Copy src to dst in 1 MiB blocks, hashing on the way; return {"sha256", "bytes"}."""
        h = hashlib.sha256()
        n = 0
        self.fs.makedirs(posixpath.dirname(dst), exist_ok=True)
        with src_fs.open(src, "rb") as fin, self.fs.open(dst, "wb") as fout:
            while block := fin.read(BLOCK):
                h.update(block)
                fout.write(block)
                n += len(block)
            sync(fout)
        make_read_only(self.fs, dst)
        return {"sha256": h.hexdigest(), "bytes": n}
