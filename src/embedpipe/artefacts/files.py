"""Filesystem helpers of the artefact store: locations, hashing, atomic writes, safe names.

Every helper takes a local path or an fsspec URL and goes through fsspec (its local
filesystem for plain paths), so the store, the manifest reader and the loader share one code
path on every backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import stat
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from embedpipe.faults import crash_point

BLOCK = 1 << 20  # the read size for hashing and copying
READ_ONLY = 0o444
TMP_PREFIX = ".tmp-"

# Where an artefact lives: a local Path, or an fsspec URL string ("s3://bucket/store/x/v0001").
Location = Path | str


class ArtefactError(Exception):
    """An artefact is missing, malformed, badly named or was modified after publish."""


class VersionGoneError(ArtefactError):
    """A version was deleted after it was resolved, or while it was being read.

    Retryable: resolve the name (or alias) again. `location` is the version's directory and
    `version` its string ('v0003'), `name` the artefact's name when known.
    """

    def __init__(self, location: str | os.PathLike[str], cause: str = "") -> None:
        self.location = as_location(location)
        self.version = posixpath.basename(os.fspath(location).rstrip("/"))
        self.name = posixpath.basename(posixpath.dirname(os.fspath(location).rstrip("/")))
        super().__init__(
            f"{self.name} {self.version} ({self.location}) was deleted while it was being read"
            + (f" ({cause})" if cause else "")
            + ": resolve it again (a newer version, or the alias's new target, may be there)"
        )


class ArtefactPathError(ArtefactError):
    """An artefact file or version directory is a symbolic link (or not a regular file or
    directory), so reading it could read data from outside the store."""


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
    """The hex sha256 of a file (path or URL), read in blocks so large files need no memory."""
    fs, path = filesystem(location)
    return sha256_of(fs, path)


def sha256_of(fs: AbstractFileSystem, path: str) -> str:
    """The hex sha256 of file `path` on `fs`, read in blocks."""
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


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


def relative_name(relname: object, where: object) -> str:
    """relname as a POSIX relative path, refusing names that escape (from untrusted input)."""
    parts = PurePosixPath(relname).parts if isinstance(relname, str) else ()
    if not parts:
        raise ArtefactError(f"invalid file name {relname!r} in {where}")
    for part in parts:
        validate_name(part, "file name")
    return "/".join(parts)


def utc_now() -> str:
    """The current UTC time in ISO 8601 with microseconds ("...+00:00")."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def sync(f: Any) -> None:
    """fsync a file being written where the filesystem has descriptors (local files)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(fs: AbstractFileSystem, path: str) -> None:
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


def make_read_only(fs: AbstractFileSystem, path: str) -> None:
    """Drop write permission where files have permissions (the local filesystem)."""
    if isinstance(fs, LocalFileSystem):
        os.chmod(path, READ_ONLY)


def write_atomic(
    fs: AbstractFileSystem,
    path: str,
    data: bytes,
    read_only: bool = False,
    point: str | None = None,
) -> None:
    """Write `data` to a unique temporary name beside `path`, then move it onto `path`.

    Locally the move is rename(2); on object stores a copy of one object. Either way a reader
    sees the old content or the new, never a partial file. `point` names the crash point
    between the two (see `embedpipe.faults`). A temporary file left by a killed writer starts
    with TMP_PREFIX; the store's gc removes it once it is older than its grace period.
    """
    parent, name = posixpath.split(path)
    tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
    fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
            sync(f)
        if read_only:
            make_read_only(fs, tmp)
        if point is not None:
            crash_point(point)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm_file(tmp)
        raise
    fsync_dir(fs, parent)


def is_link(fs: AbstractFileSystem, path: str) -> bool:
    """True when `path` is a symbolic link (only local filesystems have them)."""
    return isinstance(fs, LocalFileSystem) and os.path.islink(path)


def check_inside(fs: AbstractFileSystem, directory: str, relname: str = "") -> None:
    """Refuse (ArtefactPathError naming the path) a symbolic link at `directory` or at any
    component of `directory/relname`, and a last component that is not a regular file
    (a directory when `relname` is empty). Missing paths raise FileNotFoundError.

    Artefact files and version directories must be what they look like, inside the store:
    a link could make a verified load read bytes from anywhere. Only local filesystems have
    links; elsewhere this checks nothing.
    """
    if not isinstance(fs, LocalFileSystem):
        return
    parts = [p for p in relname.split("/") if p]
    path = directory.rstrip("/") or "/"
    for i in range(len(parts) + 1):
        if i:
            path = f"{path.rstrip('/')}/{parts[i - 1]}"
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            raise ArtefactPathError(
                f"{path} is a symbolic link: artefact files and version directories must be "
                "regular files and directories inside the store (refusing to follow it)"
            )
        if i == len(parts) and parts:
            if not stat.S_ISREG(mode):
                raise ArtefactPathError(f"{path} is not a regular file: refusing to read it")
        elif not stat.S_ISDIR(mode):
            raise ArtefactPathError(f"{path} is not a directory: refusing to read it")


def remove_tree(fs: AbstractFileSystem, path: str) -> None:
    """Remove `path` and everything under it; what another process removed first is fine.

    Locally entries are unlinked one by one (a symbolic link is removed, never followed), so
    two concurrent removals of one tree both finish; elsewhere `fs.rm(recursive=True)`.
    """
    if not isinstance(fs, LocalFileSystem):
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=True)
        return
    if os.path.islink(path) or os.path.isfile(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    for top, dirs, names in os.walk(path, topdown=False):
        for entry in names + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(top, entry))
            crash_point("remove.entry")
        for d in dirs:
            if not os.path.islink(os.path.join(top, d)):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(os.path.join(top, d))
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


def modified_before(fs: AbstractFileSystem, path: str, cutoff: datetime) -> bool:
    """True when `path` was last modified before `cutoff` (False when the filesystem cannot
    say, or the path is gone)."""
    try:
        when = fs.modified(path)
    except (OSError, NotImplementedError, KeyError, ValueError, TypeError):
        return False
    if not isinstance(when, datetime):
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when < cutoff


def entry_names(fs: AbstractFileSystem, directory: str) -> list[str]:
    """The entry names directly inside `directory` ([] when it does not exist)."""
    fs.invalidate_cache(directory)
    try:
        entries = fs.ls(directory, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    own = directory.rstrip("/")
    return [posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != own]
