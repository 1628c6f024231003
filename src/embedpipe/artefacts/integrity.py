"""Reading a published version: its manifest, checked against the schema, and its files,
checked against the manifest's sha256."""

from __future__ import annotations

import json
import os
from pathlib import PurePosixPath

from embedpipe.artefacts.files import (
    ArtefactError,
    as_location,
    filesystem,
    join,
    read_bytes,
    relative_name,
    sha256_of,
)
from embedpipe.artefacts.manifest import MANIFEST, Manifest


def read_manifest(location: str | os.PathLike[str]) -> Manifest:
    """The manifest of version `location` (path or URL), checked but without hashing files."""
    file = join(location, MANIFEST)
    try:
        data = json.loads(read_bytes(file).decode("utf-8"))
    except FileNotFoundError:
        raise ArtefactError(f"{file} not found: {location} is not a published artefact") from None
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{file} cannot be read: {e}") from e
    return Manifest.from_json(data, str(file))


def is_artefact(location: str | os.PathLike[str]) -> bool:
    """True when `location` is a committed version (it holds a manifest)."""
    fs, path = filesystem(join(location, MANIFEST))
    return fs.isfile(path)


def verify(location: str | os.PathLike[str]) -> Manifest:
    """Re-hash every file listed in the manifest of version `location`; return the manifest.

    Raises ArtefactError naming the first missing or modified file, or a file added after
    publish (one the manifest does not list).
    """
    directory = as_location(location)
    manifest = read_manifest(directory)
    shown = join(directory, MANIFEST)
    fs, root = filesystem(directory)
    for relname in sorted(manifest.files):
        path = f"{root}/{relative_name(relname, shown)}"
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
    return manifest
