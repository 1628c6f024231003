"""A versioned, content-hashed artefact store on the local filesystem.

Layout::

    <root>/<name>/v0001/            one immutable version: files + manifest.json
    <root>/<name>/v0002/
    <root>/<name>/aliases/latest    a text file holding a version string ("v0002")
    <root>/<name>/.tmp-<uuid>/      a publish in progress, invisible to readers
    <root>/<name>/.deleting-<uuid>/ a version being deleted, invisible to readers
    <root>/<name>/.deleted/v0001    a tombstone: the number of a deleted version is never reused

A version appears with a single `os.rename` of a fully written temporary directory, so readers
never see a partial version and concurrent publishers of the same name get distinct versions.
Deletion is the reverse: one rename out of sight, then removal, so a reader sees the whole
version or none of it. The manifest records the sha256 and size of every file, so `verify`
detects later tampering.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST = "manifest.json"
ALIASES = "aliases"
LATEST = "latest"
TOMBSTONES = ".deleted"
DELETING_PREFIX = ".deleting-"
BLOCK = 1 << 20  # 1 MiB: the read size for hashing and copying.
READ_ONLY = 0o444
STORE_ENV = "EMBEDPIPE_STORE"

_VERSION_RE = re.compile(r"v([0-9]+)")
_NUMBER_RE = re.compile(r"[0-9]+")


class ArtefactError(Exception):
    """An artefact is missing, malformed, badly named or was modified after publish."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks so large files need no memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Re-hash every file listed in the manifest of version dir `path`; return the manifest.

    Raises ArtefactError naming the first missing or modified file.
    """
    path = Path(path)
    manifest = read_manifest(path)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtefactError(f"{path / MANIFEST} has no 'files' table")
    for relname in sorted(files):
        entry = files[relname]
        file = _inside(path, relname)
        if not file.is_file():
            raise ArtefactError(f"{file} is listed in {path / MANIFEST} but missing")
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise ArtefactError(f"{path / MANIFEST} has no sha256 for {relname!r}")
        if sha256_file(file) != entry["sha256"]:
            raise ArtefactError(f"{file} was modified after publish: sha256 mismatch")
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed manifest.json of version dir `path`, without checking any hashes."""
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtefactError(f"{file} not found: {path} is not a published artefact") from None
    except (OSError, ValueError) as e:
        raise ArtefactError(f"{file} cannot be read: {e}") from e
    if not isinstance(manifest, dict):
        raise ArtefactError(f"{file} does not hold a JSON object")
    return manifest


def default_store() -> ArtefactStore:
    """The store at $EMBEDPIPE_STORE, else ./artefacts."""
    return ArtefactStore(os.environ.get(STORE_ENV) or "artefacts")


def validate_name(name: object, what: str = "artefact name") -> str:
    """Return `name` if it is a safe single path component, else raise ArtefactError.

    Refuses empty names, '.', '..', path separators, absolute paths, NUL and names starting
    with '.' (reserved for temporary directories).
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


def _inside(root: Path, relname: str) -> Path:
    """root / relname, refusing relative names that escape root (from an untrusted manifest)."""
    parts = PurePosixPath(relname).parts
    if not parts:
        raise ArtefactError(f"invalid file name {relname!r} in {root}")
    for part in parts:
        validate_name(part, "file name")
    return root.joinpath(*parts)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_hashed(src: Path, dst: Path) -> dict[str, Any]:
    """Copy src to dst in 1 MiB blocks, hashing on the way; return {"sha256", "bytes"}."""
    h = hashlib.sha256()
    n = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while block := fin.read(BLOCK):
            h.update(block)
            fout.write(block)
            n += len(block)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, READ_ONLY)
    return {"sha256": h.hexdigest(), "bytes": n}


def _write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write `text` to `path` via a unique temporary file and os.replace."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class ArtefactStore:
    """Immutable numbered versions of named artefacts under one root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ArtefactStore({str(self.root)!r})"

    def publish(
        self, name: str, files: Mapping[str, str | os.PathLike[str]], manifest: dict
    ) -> Path:
        """Copy `files` ({relative name: source}) into the next version of `name`; return its dir.

        The manifest is extended with name, version, created (UTC) and the sha256/size of every
        file, and `latest` is moved to the newest version. Safe against concurrent publishers.
        """
        validate_name(name)
        extra = dict(manifest)
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as e:
            raise ArtefactError(f"manifest for {name!r} is not JSON-serialisable: {e}") from e
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            table: dict[str, dict[str, Any]] = {}
            for relname, src in files.items():
                dst = _inside(tmp, relname)
                key = PurePosixPath(relname).as_posix()
                if key == MANIFEST:
                    raise ArtefactError(f"cannot publish a file named {MANIFEST}: it is reserved")
                if key in table:
                    raise ArtefactError(f"file {relname!r} given twice for {name!r}")
                if not Path(src).is_file():
                    raise ArtefactError(f"cannot publish {name!r}: source file {src} not found")
                table[key] = _copy_hashed(Path(src), dst)
            extra.update(
                name=name,
                created=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                files=table,
            )
            version_dir = self._claim_version(base, tmp, extra)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._advance_latest(name)
        return version_dir

    def _claim_version(self, base: Path, tmp: Path, manifest: dict[str, Any]) -> Path:
        """Rename tmp to the next free vNNNN, rewriting the manifest's version before each try."""
        n = self._max_number(base) + 1
        while True:
            version = format_version(n)
            manifest["version"] = version
            text = json.dumps(manifest, sort_keys=True, indent=2) + "\n"
            _write_atomic(tmp / MANIFEST, text, READ_ONLY)
            target = base / version
            try:
                os.rename(tmp, target)
            except OSError as e:
                # Another publisher won this number: the target exists and is not empty.
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not target.exists():
                    raise
                n = max(n, self._max_number(base)) + 1
                continue
            _fsync_dir(base)
            return target

    def _advance_latest(self, name: str) -> None:
        """Point `latest` at the newest version, re-checking so a racing publisher cannot
        leave it at an older one: the last writer always saw every version renamed before it.
        """
        while True:
            newest = self.versions(name)[-1]
            self._write_alias(name, LATEST, newest)
            if self.versions(name)[-1] == newest:
                return

    @staticmethod
    def _max_number(base: Path) -> int:
        """The highest version number under base, complete, incomplete or deleted (0 if none).

        Counting tombstones means a deleted number is never handed out again, so a version
        string names the same bytes forever.
        """
        numbers = [_version_number(p.name) for p in base.iterdir()] if base.is_dir() else []
        tombstones = base / TOMBSTONES
        if tombstones.is_dir():
            numbers += [_version_number(p.name) for p in tombstones.iterdir()]
        return max((n for n in numbers if n is not None), default=0)

    def versions(self, name: str) -> list[str]:
        """The complete versions of `name` (those with a manifest), oldest first."""
        base = self.root / validate_name(name)
        if not base.is_dir():
            return []
        found = [
            (n, p.name)
            for p in base.iterdir()
            if (n := _version_number(p.name)) is not None and (p / MANIFEST).is_file()
        ]
        return [v for _, v in sorted(found)]

    def names(self) -> list[str]:
        """The artefact names with at least one complete version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and self.versions(p.name)
        )

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point `alias` of `name` at an existing version (atomically replacing any old target)."""
        validate_name(name)
        self._check_alias(alias)
        target = self.resolve(name, version).name
        self._write_alias(name, alias, target)

    def _write_alias(self, name: str, alias: str, version: str) -> None:
        aliases = self.root / name / ALIASES
        aliases.mkdir(parents=True, exist_ok=True)
        _write_atomic(aliases / alias, version + "\n")

    @staticmethod
    def _check_alias(alias: str) -> str:
        """Validate an alias like a name; also refuse version-like aliases ('v3', '3')."""
        validate_name(alias, "alias")
        if _version_number(alias) is not None or _NUMBER_RE.fullmatch(alias):
            raise ArtefactError(f"invalid alias {alias!r}: it looks like a version")
        return alias

    def aliases(self, name: str) -> dict[str, str]:
        """{alias: version} for `name`."""
        directory = self.root / validate_name(name) / ALIASES
        if not directory.is_dir():
            return {}
        return {
            p.name: p.read_text(encoding="utf-8").strip()
            for p in sorted(directory.iterdir())
            if not p.name.startswith(".") and p.is_file()
        }

    def resolve(self, name: str, version: str | int = LATEST) -> Path:
        """The directory of a version of `name`: 'latest', an alias, 'v0003', '3' or 3."""
        validate_name(name)
        base = self.root / name
        if not base.is_dir():
            raise ArtefactError(f"no artefact named {name!r} in store {self.root}")
        if isinstance(version, bool):
            raise ArtefactError(f"invalid version {version!r} for artefact {name!r}")
        if isinstance(version, int) or (isinstance(version, str) and _NUMBER_RE.fullmatch(version)):
            version = format_version(int(version))
        if not isinstance(version, str) or not version:
            raise ArtefactError(f"invalid version {version!r} for artefact {name!r}")
        n = _version_number(version)
        if n is None:
            alias_file = base / ALIASES / self._check_alias(version)
            if not alias_file.is_file():
                raise ArtefactError(
                    f"artefact {name!r} has no alias {version!r} in store {self.root} "
                    f"(aliases: {sorted(self.aliases(name)) or 'none'})"
                )
            target = alias_file.read_text(encoding="utf-8").strip()
            n = _version_number(target)
            if n is None:
                raise ArtefactError(f"alias file {alias_file} holds no version: {target!r}")
        path = base / format_version(n)
        if not (path / MANIFEST).is_file():
            raise ArtefactError(
                f"artefact {name!r} has no version {format_version(n)} in store {self.root} "
                f"(versions: {self.versions(name) or 'none'})"
            )
        return path

    def delete(self, name: str, version: str | int, force: bool = False) -> list[str]:
        """Delete one version of `name`; return the aliases that pointed at it.

        `version` must be a version ('v0003', '3' or 3), not an alias, so an alias can never
        delete more than the caller named. A version that any alias names (`latest`
        included) is refused with ArtefactError naming the aliases, unless `force`: then the
        aliases are removed and `latest` moves to the newest remaining version (or is removed
        with the last one). The number is tombstoned, so it is never reused by a publish.
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
        path = self.resolve(name, version)
        target = path.name
        pointing = sorted(a for a, v in self.aliases(name).items() if v == target)
        if pointing and not force:
            raise ArtefactError(
                f"cannot delete {name} {target}: alias(es) {', '.join(pointing)} point at it "
                "(move them, or pass force=True to remove them too)"
            )
        base = self.root / name
        for alias in pointing:
            if alias != LATEST:
                with contextlib.suppress(FileNotFoundError):
                    (base / ALIASES / alias).unlink()
        tombstones = base / TOMBSTONES
        tombstones.mkdir(exist_ok=True)
        deleted_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        _write_atomic(tombstones / target, json.dumps({"deleted": deleted_at}) + "\n")
        doomed = base / f"{DELETING_PREFIX}{uuid.uuid4().hex}"
        os.rename(path, doomed)
        _fsync_dir(base)
        if LATEST in pointing or self.aliases(name).get(LATEST) == target:
            if self.versions(name):
                self._advance_latest(name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    (base / ALIASES / LATEST).unlink()
        _remove_tree(doomed)
        return pointing

    def gc(self, name: str, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions of `name`, sparing any an alias names.

        Returns the deleted versions, oldest first. Also removes leftovers of deletions that
        were interrupted (`.deleting-*` directories).
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
        base = self.root / name
        if base.is_dir():
            for leftover in base.glob(f"{DELETING_PREFIX}*"):
                _remove_tree(leftover)
        return deleted


def _remove_tree(path: Path) -> None:
    """Remove a directory of read-only published files: make everything writable, then rmtree.

    Removing a file needs a writable directory on POSIX but a writable file on Windows, so
    both are made writable. Entries that vanish meanwhile (a concurrent remover) are ignored.
    """
    for directory, subdirs, files in os.walk(path):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(directory, 0o700)
        for entry in files:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(os.path.join(directory, entry), 0o600)
        for entry in subdirs:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(os.path.join(directory, entry), 0o700)
    for _ in range(3):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            if not path.exists():
                return
    shutil.rmtree(path)
