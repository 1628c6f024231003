"""What code produced an output: the package version, a hash of its source and the git revision.

Every embedpipe process imports this module (the package's `__version__`), among them the
worker daemon Spark launches for each session, so what only the hash and the revision need
is imported when they are asked for.
"""

from __future__ import annotations

import functools
import hashlib
import os

__version__ = "0.1.0"

_PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))


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
    import zipfile
    from pathlib import Path

    package = Path(_PACKAGE_DIR)
    if package.is_dir():
        return [
            (path.relative_to(package).as_posix(), path.read_bytes())
            for path in package.rglob("*.py")
        ]
    archive = next(p for p in package.parents if p.is_file())  # the zip imported from
    inside = package.relative_to(archive).as_posix() + "/"
    with zipfile.ZipFile(archive) as zf:
        return [
            (name.removeprefix(inside), zf.read(name))
            for name in zf.namelist()
            if name.startswith(inside) and name.endswith(".py")
        ]


@functools.cache
def git_revision() -> str | None:
    """The git commit of the checkout the package runs from, if it runs from one."""
    import subprocess

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
