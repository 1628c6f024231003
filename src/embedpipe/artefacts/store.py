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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import socket
import uuid
import warnings
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

MANIFEST = "manifest.json"
ALIASES = "aliases"
LATEST = "latest"
CLAIMS = ".claims"
TOMBSTONES = ".deleted"
DELETING_PREFIX = ".deleting-"  # left by interrupted deletes of earlier releases
TMP_PREFIX = ".tmp-"
BLOCK = 1 << 20  # 1 MiB: the read size for hashing and copying.
READ_ONLY = 0o444
STORE_ENV = "EMBEDPIPE_STORE"
ABANDONED_AFTER = 24 * 3600.0  # seconds after which gc removes a claimed, uncommitted version

_VERSION_RE = re.compile(r"v([0-9]+)")
_NUMBER_RE = re.compile(r"[0-9]+")

# Where an artefact lives: a local Path, or an fsspec URL string ("s3://bucket/store/x/v0001").
Location = Path | str


class ArtefactError(Exception):
    """An artefact is missing, malformed, badly named or was modified after publish."""


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL ("memory://x", "s3://b/k", "simplecache::s3://..."), not a path."""
    text = os.fspath(location)
    return "::" in text or fsspec.core.split_protocol(text)[0] is not None


def as_location(location: str | os.PathLike[str]) -> Location:
    """A URL stays a string (without a trailing '/'); anything else becomes a Path."""
    if isinstance(location, str) and is_url(location):
        return location.rstrip("/")
    return Path(location)


def join(location: str | os.PathLike[str], *parts: str) -> Location:
    """location / part / ..., keeping the form of `location` (Path or URL)."""
    base = as_location(location)
    if isinstance(base, Path):
        return base.joinpath(*parts)
    return "/".join([base, *parts])


def filesystem(location: str | os.PathLike[str]) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem holding `location` and the path within it."""
    return fsspec.core.url_to_fs(os.fspath(location))


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """The whole content of a file at a path or URL."""
    fs, path = filesystem(location)
    return fs.cat_file(path)


def sha256_file(location: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file (path or URL), read in 1 MiB blocks so large files need no
    memory."""
    fs, path = filesystem(location)
    return _sha256(fs, path)


def _sha256(fs: AbstractFileSystem, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def verify(location: str | os.PathLike[str]) -> dict[str, Any]:
    """Re-hash every file listed in the manifest of version `location`; return the manifest.

    Raises ArtefactError naming the first missing or modified file, or a file added after
    publish (one the manifest does not list).
    """
    directory = as_location(location)
    manifest = read_manifest(directory)
    shown = join(directory, MANIFEST)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtefactError(f"{shown} has no 'files' table")
    fs, root = filesystem(directory)
    for relname in sorted(files):
        rel = _relative(relname, directory)
        entry = files[relname]
        path = f"{root}/{rel}"
        if not fs.isfile(path):
            raise ArtefactError(f"{join(directory, rel)} is listed in {shown} but missing")
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise ArtefactError(f"{shown} has no sha256 for {relname!r}")
        if _sha256(fs, path) != entry["sha256"]:
            raise ArtefactError(
                f"{join(directory, rel)} was modified after publish: sha256 mismatch"
            )
    listed = {PurePosixPath(r).as_posix() for r in files} | {MANIFEST}
    fs.invalidate_cache(root)
    inside = root.rstrip("/") + "/"
    for path in fs.find(root, withdirs=False):
        rel = path[len(inside) :] if path.startswith(inside) else None
        if rel is not None and rel not in listed:
            raise ArtefactError(
                f"{join(directory, rel)} is not listed in {shown}: added after publish"
            )
    return manifest


def read_manifest(location: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed manifest.json of version `location`, without checking any hashes."""
    file = join(location, MANIFEST)
    try:
        manifest = json.loads(read_bytes(file).decode("utf-8"))
    except FileNotFoundError:
        raise ArtefactError(f"{file} not found: {location} is not a published artefact") from None
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{file} cannot be read: {e}") from e
    if not isinstance(manifest, dict):
        raise ArtefactError(f"{file} does not hold a JSON object")
    return manifest


def is_artefact(location: str | os.PathLike[str]) -> bool:
    """True when `location` is a committed version (it holds a manifest)."""
    fs, path = filesystem(join(location, MANIFEST))
    return fs.isfile(path)


def default_store() -> ArtefactStore:
    """The store at $EMBEDPIPE_STORE (a path or URL), else ./artefacts."""
    return ArtefactStore(os.environ.get(STORE_ENV) or "artefacts")


def validate_name(name: object, what: str = "artefact name") -> str:
    """Return `name` if it is a safe single path component, else raise ArtefactError.

    Refuses empty names, '.', '..', path separators, absolute paths, NUL and names starting
    with '.' (reserved for the store's own files).
    """
    if not isinstance(name, str) or not name:
        raise ArtefactError(f"invalid {what} {name!r}: must be a non-empty string")
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in name for s in seps) or os.path.isabs(name):
        raise ArtefactError(f"invalid {what} {name!r}: must not contain a path separator")
    if name.startswith(".") or "\0" in name:
        raise ArtefactError(f"invalid {what} {name!r}: must not start with '.' or contain NUL")
    return name


def format_version(n: int) -> str:
    """The directory name of version number n: 3 -> 'v0003'."""
    return f"v{n:04d}"


def _version_number(s: str) -> int | None:
    """The number of a version string 'v0003' (or 'v3'), None if it is not one."""
    m = _VERSION_RE.fullmatch(s)
    return int(m.group(1)) if m else None


def _relative(relname: str, where: object) -> str:
    """relname as a POSIX relative path, refusing names that escape (from untrusted input)."""
    parts = PurePosixPath(relname).parts if isinstance(relname, str) else ()
    if not parts:
        raise ArtefactError(f"invalid file name {relname!r} in {where}")
    for part in parts:
        validate_name(part, "file name")
    return "/".join(parts)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _sync(f: Any) -> None:
    """fsync a file being written where the filesystem has descriptors (local files)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(fs: AbstractFileSystem, path: str) -> None:
    """Make a rename inside local directory `path` durable; a no-op on other filesystems."""
    if not isinstance(fs, LocalFileSystem):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def _make_read_only(fs: AbstractFileSystem, path: str) -> None:
    """Drop write permission where files have permissions (the local filesystem)."""
    if isinstance(fs, LocalFileSystem):
        os.chmod(path, READ_ONLY)


def _write_atomic(fs: AbstractFileSystem, path: str, data: bytes, read_only: bool = False) -> None:
    """Write `data` to a unique temporary name beside `path`, then move it onto `path`.

    Locally the move is rename(2); on object stores a copy of one object. Either way a reader
    sees the old content or the new, never a partial file.
    """
    parent, name = posixpath.split(path)
    tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
    fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
            _sync(f)
        if read_only:
            _make_read_only(fs, tmp)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm_file(tmp)
        raise
    _fsync_dir(fs, parent)


def _names(fs: AbstractFileSystem, directory: str) -> list[str]:
    """The entry names directly inside `directory` ([] when it does not exist)."""
    fs.invalidate_cache(directory)
    try:
        entries = fs.ls(directory, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    own = directory.rstrip("/")
    return [posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != own]


class ArtefactStore:
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
        self, name: str, files: Mapping[str, str | os.PathLike[str]], manifest: dict
    ) -> Location:
        """Copy `files` ({relative name: source path or URL}) into the next version of `name`.

        The manifest is extended with name, version, created (UTC) and the sha256/size of every
        file, written last as the commit marker, and `latest` is moved to the newest version.
        Returns the version's location. Safe against concurrent publishers (see the module).
        A version that fails half-way is removed; its number stays claimed.
        """
        validate_name(name)
        extra = dict(manifest)
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as e:
            raise ArtefactError(f"manifest for {name!r} is not JSON-serialisable: {e}") from e
        base = self._path(name)
        self.fs.makedirs(base, exist_ok=True)
        sources: dict[str, tuple[AbstractFileSystem, str]] = {}
        for relname, src in files.items():
            key = _relative(relname, join(self.root, name))
            if key == MANIFEST:
                raise ArtefactError(f"cannot publish a file named {MANIFEST}: it is reserved")
            if key in sources:
                raise ArtefactError(f"file {relname!r} given twice for {name!r}")
            src_fs, src_path = filesystem(src)
            if not src_fs.isfile(src_path):
                raise ArtefactError(f"cannot publish {name!r}: source file {src} not found")
            sources[key] = (src_fs, src_path)

        version = self._claim(name)
        directory = f"{base}/{version}"
        try:
            table = {key: self._copy(fs, path, f"{directory}/{key}") for key, (fs, path) in
                     sources.items()}  # fmt: skip
            extra.update(name=name, version=version, created=_now(), files=table)
            text = json.dumps(extra, sort_keys=True, indent=2) + "\n"
            _write_atomic(self.fs, f"{directory}/{MANIFEST}", text.encode(), read_only=True)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.rm(directory, recursive=True)
            raise
        self._advance_latest(name)
        if self.keep is not None:
            self.gc(name, self.keep)
        return self.location(name, version)

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
            _sync(fout)
        _make_read_only(self.fs, dst)
        return {"sha256": h.hexdigest(), "bytes": n}

    def _claim(self, name: str) -> str:
        """Create `.claims/vNNNN` exclusively for the next free number; return 'vNNNN'."""
        claims = self._path(name, CLAIMS)
        self.fs.makedirs(claims, exist_ok=True)
        exclusive = self._exclusive_create_works(claims)
        record = {"claimed": _now(), "host": socket.gethostname(), "pid": os.getpid(),
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
            _sync(f)

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
            _version_number(entry)
            for directory in ((), (CLAIMS,), (TOMBSTONES,))
            for entry in _names(self.fs, self._path(name, *directory))
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
                n = _version_number(parts[0])
                if n is not None and parts[0] == format_version(n):
                    numbers.append(n)
        return [format_version(n) for n in sorted(numbers)]

    def names(self) -> list[str]:
        """The artefact names with at least one committed version, sorted."""
        found = []
        for entry in _names(self.fs, self._root):
            with contextlib.suppress(ArtefactError):
                if self.versions(validate_name(entry)):
                    found.append(entry)
        return sorted(found)

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point `alias` of `name` at an existing version (atomically replacing any old target)."""
        validate_name(name)
        self._check_alias(alias)
        target = self._version_of(name, version)
        self._write_alias(name, alias, target)

    def _write_alias(self, name: str, alias: str, version: str) -> None:
        _write_atomic(self.fs, self._path(name, ALIASES, alias), (version + "\n").encode())

    @staticmethod
    def _check_alias(alias: str) -> str:
        """Validate an alias like a name; also refuse version-like aliases ('v3', '3')."""
        validate_name(alias, "alias")
        if _version_number(alias) is not None or _NUMBER_RE.fullmatch(alias):
            raise ArtefactError(f"invalid alias {alias!r}: it looks like a version")
        return alias

    def aliases(self, name: str) -> dict[str, str]:
        """{alias: version} for `name`."""
        directory = self._path(validate_name(name), ALIASES)
        found = {}
        for alias in sorted(_names(self.fs, directory)):
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
        if isinstance(version, int) or (isinstance(version, str) and _NUMBER_RE.fullmatch(version)):
            version = format_version(int(version))
        if not isinstance(version, str) or not version:
            raise ArtefactError(f"invalid version {version!r} for artefact {name!r}")
        n = _version_number(version)
        if n is None:
            alias_file = f"{base}/{ALIASES}/{self._check_alias(version)}"
            try:
                target = self.fs.cat_file(alias_file).decode().strip()
            except FileNotFoundError:
                raise ArtefactError(
                    f"artefact {name!r} has no alias {version!r} in store {self.root} "
                    f"(aliases: {sorted(self.aliases(name)) or 'none'})"
                ) from None
            n = _version_number(target)
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

    # -- deleting ---------------------------------------------------------------------------

    def delete(self, name: str, version: str | int, force: bool = False) -> list[str]:
        """Delete one version of `name`; return the aliases that pointed at it.

        `version` must be a version ('v0003', '3' or 3), not an alias, so an alias can never
        delete more than the caller named. A version that any alias names (`latest`
        included) is refused with ArtefactError naming the aliases, unless `force`: then the
        aliases are removed and `latest` moves to the newest remaining version (or is removed
        with the last one). The number stays claimed, so no later publish reuses it.
        """
        validate_name(name)
        if (
            isinstance(version, str)
            and _version_number(version) is None
            and not _NUMBER_RE.fullmatch(version)
        ):
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
        tombstone = json.dumps({"deleted": _now()}) + "\n"
        _write_atomic(self.fs, self._path(name, TOMBSTONES, target), tombstone.encode())
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
        tombstones = set(_names(self.fs, self._path(name, TOMBSTONES)))
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=abandoned_after)
        for entry in _names(self.fs, self._path(name)):
            path = self._path(name, entry)
            if entry.startswith(DELETING_PREFIX):
                stale = True
            elif _version_number(entry) is not None and entry not in committed:
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
