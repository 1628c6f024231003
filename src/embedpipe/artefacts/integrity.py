"""Reading a published version: its manifest, checked against the schema, and its files,
checked against the manifest's sha256.

A version deleted while it is read raises `VersionGoneError` (retryable), never a bare
FileNotFoundError; a symbolic link where a version directory or file should be raises
`ArtefactPathError` (see `files.check_inside`).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
from pathlib import PurePosixPath

from embedpipe.artefacts.files import (
    ArtefactError,
    VersionGoneError,
    as_location,
    check_inside,
    filesystem,
    join,
    relative_name,
    sha256_of,
)
from embedpipe.artefacts.layout import TOMBSTONES, version_number
from embedpipe.artefacts.manifest import MANIFEST, Manifest


def read_manifest(location: str | os.PathLike[str]) -> Manifest:
    """The manifest of version `location` (path or URL), checked but without hashing files."""
    file = join(location, MANIFEST)
    fs, root = filesystem(location)
    try:
        check_inside(fs, root, MANIFEST)
        data = json.loads(fs.cat_file(f"{root.rstrip('/')}/{MANIFEST}").decode("utf-8"))
    except FileNotFoundError:
        if was_deleted(location):
            raise VersionGoneError(location, f"{file} is gone") from None
        raise ArtefactError(f"{file} not found: {location} is not a published artefact") from None
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{file} cannot be read: {e}") from e
    return Manifest.from_json(data, str(file))


def is_artefact(location: str | os.PathLike[str]) -> bool:
    """True when `location` is a committed version (it holds a manifest)."""
    fs, path = filesystem(join(location, MANIFEST))
    fs.invalidate_cache(posixpath.dirname(path))
    return fs.isfile(path)


def was_deleted(location: str | os.PathLike[str]) -> bool:
    """True when version directory `location` of a store has no manifest (any more) and its
    number has a tombstone, or when its directory is gone while it was being read."""
    fs, path = filesystem(location)
    path = path.rstrip("/")
    version = posixpath.basename(path)
    if version_number(version) is None or is_artefact(location):
        return False
    tombstone = f"{posixpath.dirname(path)}/{TOMBSTONES}/{version}"
    fs.invalidate_cache(posixpath.dirname(tombstone))
    return fs.exists(tombstone)


def gone_or(location: str | os.PathLike[str], error: Exception) -> Exception:
    """VersionGoneError when version `location` was deleted (the cause of `error`, a read
    that failed), else `error`."""
    if isinstance(error, VersionGoneError) or not was_deleted(location):
        return error
    return VersionGoneError(location, str(error))


def verify(location: str | os.PathLike[str]) -> Manifest:
    """Re-hash every file listed in the manifest of version `location`; return the manifest.

    Raises ArtefactError naming the first missing or modified file, or a file added after
    publish (one the manifest does not list); ArtefactPathError for a symbolic link in place
    of the version directory or of a file; VersionGoneError when the version is deleted
    meanwhile.
    """
    directory = as_location(location)
    fs, root = filesystem(directory)
    with contextlib.suppress(FileNotFoundError):  # read_manifest says what is missing
        check_inside(fs, root)
    manifest = read_manifest(directory)
    try:
        _check_files(directory, manifest)
    except (ArtefactError, OSError) as e:
        raise gone_or(directory, e) from e
    return manifest


def _check_files(directory: str | os.PathLike[str], manifest: Manifest) -> None:
    shown = join(directory, MANIFEST)
    fs, root = filesystem(directory)
    for relname in sorted(manifest.files):
        rel = relative_name(relname, shown)
        path = f"{root}/{rel}"
        with contextlib.suppress(FileNotFoundError):  # said below
            check_inside(fs, root, rel)
        if not fs.isfile(path):
            raise ArtefactError(f"{join(directory, relname)} is listed in {shown} but missing")
        if sha256_of(fs, path) != manifest.files[relname].sha256:
            raise ArtefactError(
                f"{join(directory, relname)} was modified after publish: sha256 mismatch"
            )
    listed = {PurePosixPath(r).as_posix() for r in manifest.files} | {MANIFEST}
    fs.invalidate_cache(root)
    inside = root.rstrip("/") + "/"
    for path in fs.find(root, withdirs=False):
        rel = path[len(inside) :] if path.startswith(inside) else None
        if rel is not None and rel not in listed:
            raise ArtefactError(
                f"{join(directory, rel)} is not listed in {shown}: added after publish"
            )
