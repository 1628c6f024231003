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
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

BLOCK = 1 << 20  # the read size for hashing and copying
READ_ONLY = 0o444
TMP_PREFIX = ".tmp-"

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


def write_atomic(fs: AbstractFileSystem, path: str, data: bytes, read_only: bool = False) -> None:
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
            sync(f)
        if read_only:
            make_read_only(fs, tmp)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.rm_file(tmp)
        raise
    fsync_dir(fs, parent)


def entry_names(fs: AbstractFileSystem, directory: str) -> list[str]:
    """The entry names directly inside `directory` ([] when it does not exist)."""
    fs.invalidate_cache(directory)
    try:
        entries = fs.ls(directory, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    own = directory.rstrip("/")
    return [posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != own]
