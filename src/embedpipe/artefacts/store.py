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

Aliases are small files replaced the same way (temporary file, then move). Deletion reverses
a publish: tombstone, then the manifest (the version disappears at once), then the rest.

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
`integrity.py`; deletion and retention in `retention.py`; filesystem helpers in `files.py`;
where the store is in `store_root` below.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import socket
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

from fsspec import AbstractFileSystem

from embedpipe.artefacts.files import (
    BLOCK,
    ArtefactError,
    Location,
    as_location,
    entry_names,
    filesystem,
    join,
    make_read_only,
    relative_name,
    sync,
    utc_now,
    validate_name,
    write_atomic,
)
from embedpipe.artefacts.integrity import read_manifest
from embedpipe.artefacts.layout import (
    ALIASES,
    CLAIMS,
    LATEST,
    TOMBSTONES,
    format_version,
    is_number,
    is_version_like,
    version_number,
)
from embedpipe.artefacts.manifest import IDENTITY, MANIFEST, Manifest, parse_details
from embedpipe.artefacts.retention import Retention

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


class ArtefactStore(Retention):
    """Immutable numbered versions of named artefacts under one root (a path or fsspec URL).

    Locations are handed back in the form the root was given: Paths for a path, URL strings
    for a URL. With `keep`, every publish is followed by `gc(name, keep)`: the newest `keep`
    versions and every aliased one stay (retention).
    """

    def __init__(self, root: str | os.PathLike[str], keep: int | None = None) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ArtefactError(f"keep must be an integer >= 1 or None, got {keep!r}")
        self.keep = keep
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
        self, name: str, files: Mapping[str, str | os.PathLike[str]], details: Mapping[str, Any]
    ) -> Location:
        """Copy `files` ({relative name: source path or URL}) into the next version of `name`.

        `details` is the manifest's content (`manifest_details(...)`, or any JSON object for
        artefacts of other tools): it is checked as a `Manifest` before anything is claimed.
        The store adds name, version, created (UTC) and the sha256/size of every file, writes
        the manifest last as the commit marker and moves `latest` to the newest version.
        Returns the version's location. Safe against concurrent publishers (see the module).
        A version that fails half-way is removed; its number stays claimed.
        """
        validate_name(name)
        self._check_details(name, details)
        sources = self._sources(name, files)
        base = self._path(name)
        self.fs.makedirs(base, exist_ok=True)
        version = self._claim(name)
        directory = f"{base}/{version}"
        try:
            table = {key: self._copy(fs, path, f"{directory}/{key}") for key, (fs, path) in
                     sources.items()}  # fmt: skip
            identity = {"name": name, "version": version, "created": utc_now(), "files": table}
            where = str(join(self.root, name, version, MANIFEST))
            manifest = Manifest.from_json({**details, **identity}, where)
            text = json.dumps(manifest.to_json(), sort_keys=True, indent=2) + "\n"
            write_atomic(self.fs, f"{directory}/{MANIFEST}", text.encode(), read_only=True)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.rm(directory, recursive=True)
            raise
        self._advance_latest(name)
        if self.keep is not None:
            self.gc(name, self.keep)
        return self.location(name, version)

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

    def _claim(self, name: str) -> str:
        """Create `.claims/vNNNN` exclusively for the next free number; return 'vNNNN'."""
        claims = self._path(name, CLAIMS)
        self.fs.makedirs(claims, exist_ok=True)
        exclusive = self._exclusive_create_works(claims)
        record = {"claimed": utc_now(), "host": socket.gethostname(), "pid": os.getpid(),
                  "token": uuid.uuid4().hex}  # fmt: skip
        n = self._max_number(name) + 1
        while True:
            version = format_version(n)
            try:
                self._create(f"{claims}/{version}", json.dumps(record).encode(), exclusive)
            except FileExistsError:
                n = max(n, self._max_number(name)) + 1
                continue
            return version

    def _create(self, path: str, data: bytes, exclusive: bool) -> None:
        """Create a new file, raising FileExistsError when it exists (atomically if exclusive)."""
        if not exclusive and self.fs.exists(path):
            raise FileExistsError(path)
        with self.fs.open(path, "xb" if exclusive else "wb") as f:
            f.write(data)
            sync(f)

    def _exclusive_create_works(self, directory: str) -> bool:
        """Probe once whether the filesystem refuses a second exclusive create of a file."""
        if self._exclusive is None:
            probe = f"{directory}/.probe-{uuid.uuid4().hex}"
            try:
                works = False
                try:
                    for _ in range(2):
                        with self.fs.open(probe, "xb") as f:
                            f.write(b"probe")
                except FileExistsError:
                    works = True
                except (ValueError, NotImplementedError):
                    works = False  # the backend has no exclusive mode at all
            finally:
                with contextlib.suppress(OSError):
                    self.fs.rm_file(probe)
            if not works:
                warnings.warn(
                    f"{type(self.fs).__name__} does not honour exclusive file creation: "
                    f"concurrent publishers to {self.root} may collide (publish from one "
                    "process at a time there)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._exclusive = works
        return self._exclusive

    def _advance_latest(self, name: str) -> None:
        """Point `latest` at the newest version, re-checking so a racing publisher cannot
        leave it at an older one: the last writer always saw every version committed before it.
        """
        while True:
            newest = self.versions(name)[-1]
            self._write_alias(name, LATEST, newest)
            if self.versions(name)[-1] == newest:
                return

    def _max_number(self, name: str) -> int:
        """The highest version number of `name` ever claimed, written or deleted (0 if none).

        Claims and tombstones mean a number is never handed out again, so a version string
        names the same bytes forever (version directories count for stores without claims).
        """
        numbers = [
            version_number(entry)
            for directory in ((), (CLAIMS,), (TOMBSTONES,))
            for entry in entry_names(self.fs, self._path(name, *directory))
        ]
        return max((n for n in numbers if n is not None), default=0)

    # -- reading ----------------------------------------------------------------------------

    def versions(self, name: str) -> list[str]:
        """The committed versions of `name` (those with a manifest), oldest first."""
        base = self._path(validate_name(name))
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
        report compares a version with)."""
        return [read_manifest(self.location(name, v)) for v in self.versions(name)]

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point `alias` of `name` at an existing version (atomically replacing any old target)."""
        validate_name(name)
        self._check_alias(alias)
        target = self._version_of(name, version)
        self._write_alias(name, alias, target)

    def _write_alias(self, name: str, alias: str, version: str) -> None:
        write_atomic(self.fs, self._path(name, ALIASES, alias), (version + "\n").encode())

    @staticmethod
    def _check_alias(alias: str) -> str:
        """Validate an alias like a name; also refuse version-like aliases ('v3', '3')."""
        validate_name(alias, "alias")
        if is_version_like(alias):
            raise ArtefactError(f"invalid alias {alias!r}: it looks like a version")
        return alias

    def aliases(self, name: str) -> dict[str, str]:
        """{alias: version} for `name`."""
        directory = self._path(validate_name(name), ALIASES)
        found = {}
        for alias in sorted(entry_names(self.fs, directory)):
            if alias.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                found[alias] = self.fs.cat_file(f"{directory}/{alias}").decode().strip()
        return found

    def resolve(self, name: str, version: str | int = LATEST) -> Location:
        """The location of a version of `name`: 'latest', an alias, 'v0003', '3' or 3."""
        return self.location(name, self._version_of(name, version))

    def _version_of(self, name: str, version: str | int) -> str:
        """The committed version string ('v0003') that `version` names, else ArtefactError."""
        validate_name(name)
        base = self._path(name)
        if not self.fs.isdir(base):
            raise ArtefactError(f"no artefact named {name!r} in store {self.root}")
        if isinstance(version, bool):
            raise ArtefactError(f"invalid version {version!r} for artefact {name!r}")
        if isinstance(version, int) or (isinstance(version, str) and is_number(version)):
            version = format_version(int(version))
        if not isinstance(version, str) or not version:
            raise ArtefactError(f"invalid version {version!r} for artefact {name!r}")
        n = version_number(version)
        if n is None:
            alias_file = f"{base}/{ALIASES}/{self._check_alias(version)}"
            try:
                target = self.fs.cat_file(alias_file).decode().strip()
            except FileNotFoundError:
                raise ArtefactError(
                    f"artefact {name!r} has no alias {version!r} in store {self.root} "
                    f"(aliases: {sorted(self.aliases(name)) or 'none'})"
                ) from None
            n = version_number(target)
            if n is None:
                raise ArtefactError(
                    f"alias file {join(self.root, name, ALIASES, version)} holds no version: "
                    f"{target!r}"
                )
        if not self.fs.isfile(f"{base}/{format_version(n)}/{MANIFEST}"):
            raise ArtefactError(
                f"artefact {name!r} has no version {format_version(n)} in store {self.root} "
                f"(versions: {self.versions(name) or 'none'})"
            )
        return format_version(n)
