"""What code produced an output: the package version, a hash of its source and the git revision."""

from __future__ import annotations

import functools
import hashlib
import subprocess
import zipfile
from pathlib import Path

__version__ = "0.1.0"

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def source_hash() -> str:
    """A short hash of every Python source file of the package: changes when the code does.

    The same whether the package is a directory or runs from a zip (spark-submit's
    `--py-files`), so a stage run either way has the same fingerprint."""
    digest = hashlib.sha256()
    for name, data in sorted(_source_files()):
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()[:12]


def _source_files() -> list[tuple[str, bytes]]:
    """(path relative to the package, bytes) of every .py file of the package."""
    if _PACKAGE_DIR.is_dir():
        return [
            (path.relative_to(_PACKAGE_DIR).as_posix(), path.read_bytes())
            for path in _PACKAGE_DIR.rglob("*.py")
        ]
    archive = next(p for p in _PACKAGE_DIR.parents if p.is_file())  # the zip imported from
    inside = _PACKAGE_DIR.relative_to(archive).as_posix() + "/"
    with zipfile.ZipFile(archive) as zf:
        return [
            (name.removeprefix(inside), zf.read(name))
            for name in zf.namelist()
            if name.startswith(inside) and name.endswith(".py")
        ]


@functools.cache
def git_revision() -> str | None:
    """The git commit of the checkout the package runs from, if it runs from one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=_PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def code_version() -> dict[str, str | None]:
    return {"package": __version__, "source": source_hash(), "git": git_revision()}
