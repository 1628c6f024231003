"""How a stage publishes its output: all or nothing, on a local disk or an object store.

The layout of a table (see `embedpipe.workdir`):

    <workdir>/<table>/_MANIFEST.json     the commit: names the run directory below ("data")
    <workdir>/<table>/<run>/             one run's files: `run-<utc time>-<id>/`
    <workdir>/<table>.<side>/<run>/      that run's side tables (`tokens.rejects/`, ...)
    <workdir>/.staging/<stage>.lock      the run of the stage in progress (`lock.StageLock`)

A run of a stage:

1. skips, without more ado, when the committed manifest has its fingerprint (the config
   sections the registry names for the stage, its inputs, the code) and every file the
   manifest lists is there with its size;
2. takes the stage's lock: a second run of the stage on the workdir waits (bounded) or
   refuses, naming the holder; it looks at the manifest again (a run it waited for may have
   committed this very output);
3. removes what killed runs left: run directories no manifest names (in `<table>/` and the
   side tables'), manifest temporaries, the stage's stale files in `.staging/`;
4. writes into a new run directory `<table>/<run>/` (and `<table>.<side>/<run>/`): nothing
   is renamed, as a directory rename on an object store is a copy of every file; on a local
   disk every file and directory is fsynced;
5. commits: writes `_MANIFEST.json` (fingerprint, config, inputs, counts, the run directory
   and its files with their sizes) in one step: a temporary file renamed over the old
   manifest on a local disk, a single PUT on an object store;
6. retires the old output: every other entry of `<table>/` and of its side tables' dirs;
7. releases the lock.

A reader that resolves the table through `Workdir.table_path` (which reads the manifest)
sees the old complete run or the new complete one, never a mix: until step 5 the manifest
names the old run, whose files nothing touches; from step 5 on, the new one, complete since
step 4. A run killed anywhere (`crash_point`s at each step, named below) leaves the committed
table readable; the next run of the stage, whatever its config, cleans up what it left. A
reader that globs `<table>/**/*.parquet` instead reads one run whenever no run of the stage is
between steps 4 and 6. A run that replaces a table deletes the old run's files (step 6): a
process still reading the old run (a training started before the rerun) loses them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from embedpipe.config import RunConfig, fingerprint
from embedpipe.corpus.registry import Stage
from embedpipe.corpus.spark.lock import (
    StageBusyError,
    StageLock,
    env_seconds,
    lock_leftover_pid,
    modified_at,
    pid_alive,
)
from embedpipe.faults import crash_point
from embedpipe.version import code_version
from embedpipe.workdir import MANIFEST, RUN_PREFIX, Workdir, side_name

GRACE_ENV = "EMBEDPIPE_STAGING_GRACE"
DEFAULT_GRACE = 3600.0  # seconds: a file in .staging/ older than this is a dead run's
MANIFEST_TMP = f"{MANIFEST}."  # _MANIFEST.json.<run>.tmp: a manifest being written

# The crash points of a run, in order (`embedpipe.faults`; the fault-injection suite kills
# a run at each). stage.retiring is hit before each old entry is removed.
CRASH_POINTS = (
    "lock.acquired",  # in lock.StageLock.acquire
    "stage.locked",
    "stage.cleaned",
    "stage.data_written",
    "stage.manifest_staged",
    "stage.committed",
    "stage.retiring",
    "stage.retired",
)


def run_stage(
    stage: Stage,
    config: RunConfig,
    write: Callable[[str], dict[str, Any]],
    inputs: dict[str, Any] | None = None,
    lock_wait: float | None = None,
) -> dict[str, Any]:
    """Run `write(out) -> counts` unless an identical run already committed (see above).

    `write` puts the table's files under `out` (`<workdir>/<table>/<run>`) and a side table
    `x` under `embedpipe.workdir.side_output(out, x)`. The fingerprint holds
    `stage.config_of(config)` (the sections the registry names, the same the flow's cache key
    holds) and `inputs`: by default the fingerprints of the stage's upstream tables, read from
    their manifests; the tokenize stage passes its input files' instead. `lock_wait`: seconds
    to wait for another run of the stage (default: `lock.DEFAULT_WAIT`, or
    $EMBEDPIPE_STAGE_LOCK_WAIT). Returns the stage manifest; `skipped` tells whether the work
    was reused.
    """
    workdir = Workdir(config.workdir)
    if inputs is None:
        inputs = {t: workdir.require(t)["fingerprint"] for t in stage.upstream}
    sections = stage.config_of(config)
    key = fingerprint(stage.name, sections, inputs, code_version()["source"])

    existing = workdir.read_manifest(stage.table)
    if reusable(workdir, stage.table, existing, key):
        fs, lock_path = fsspec.core.url_to_fs(workdir.stage_lock(stage.name))
        if fs.exists(lock_path) or leftovers(workdir, stage, existing):
            # A killed run's lock or files: tidy them, unless a run of the stage is going on.
            with contextlib.suppress(StageBusyError), _lock(workdir, stage, 0.0):
                tidy(workdir, stage, workdir.read_manifest(stage.table))
        return {**existing, "skipped": True}

    with _lock(workdir, stage, lock_wait) as lock:
        existing = workdir.read_manifest(stage.table)  # a run we waited for may have made it
        if reusable(workdir, stage.table, existing, key):
            tidy(workdir, stage, existing)
            return {**existing, "skipped": True}
        crash_point("stage.locked")
        tidy(workdir, stage, existing)
        crash_point("stage.cleaned")
        manifest = _write_and_commit(workdir, stage, write, lock, sections, inputs, key)
        crash_point("stage.committed")
        tidy(workdir, stage, manifest, crash="stage.retiring")
        crash_point("stage.retired")
    return {**manifest, "skipped": False}


def _lock(workdir: Workdir, stage: Stage, wait: float | None) -> StageLock:
    return StageLock(workdir.root, stage.name, workdir.stage_lock(stage.name), wait=wait)


def _write_and_commit(
    workdir: Workdir,
    stage: Stage,
    write: Callable[[str], dict[str, Any]],
    lock: StageLock,
    sections: dict[str, Any],
    inputs: dict[str, Any],
    key: str,
) -> dict[str, Any]:
    """Steps 4 and 5: the new run's files, then its manifest. A failure removes the run."""
    started = time.time()
    stamp = datetime.fromtimestamp(started, timezone.utc).strftime("%Y%m%dT%H%M%S")
    run = f"{RUN_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"
    fs, table_dir = fsspec.core.url_to_fs(workdir.path(stage.table))
    out = f"{table_dir}/{run}"
    try:
        counts = write(fs.unstrip_protocol(out))
        files = _sizes(fs, out)
        sides = {
            side: _sizes(fs, f"{side_dir}/{run}")
            for side, side_dir in _side_dirs(fs, workdir, stage.table).items()
            if fs.exists(f"{side_dir}/{run}")
        }
        if isinstance(fs, LocalFileSystem):
            _sync_tree(out)
            for side in sides:
                _sync_tree(f"{table_dir}.{side}/{run}")
        crash_point("stage.data_written")
        manifest = {
            "stage": stage.name,
            "table": stage.table,
            "fingerprint": key,
            "config": sections,
            "inputs": inputs,
            "counts": counts,
            "code_version": code_version(),
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "seconds": round(time.time() - started, 3),
            "data": run,
            "files": files,
            "sides": sides,
        }
        manifest = json.loads(json.dumps(manifest, default=_jsonable))
        lock.check()  # a run judged gone (its lock taken over) must not commit
        commit_manifest(fs, table_dir, manifest)
    except BaseException:
        with contextlib.suppress(Exception):
            committed = workdir.read_manifest(stage.table)
            if committed is None or committed.get("data") != run:
                _remove_run(fs, workdir, stage.table, run)
        raise
    return manifest


def commit_manifest(fs: fsspec.AbstractFileSystem, table_dir: str, manifest: dict) -> None:
    """Write `<table_dir>/_MANIFEST.json` in one step (the commit)."""
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    path = f"{table_dir}/{MANIFEST}"
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.{manifest['data']}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        crash_point("stage.manifest_staged")
        os.replace(tmp, path)
        _sync_dir(table_dir)
    else:  # one PUT: readers see the old object or the new one
        crash_point("stage.manifest_staged")
        fs.pipe_file(path, data)


def reusable(workdir: Workdir, table: str, manifest: dict | None, key: str) -> bool:
    """Whether the committed output is this run's (same fingerprint) and intact."""
    if manifest is None or manifest.get("fingerprint") != key:
        return False
    return table_damage(workdir, table, manifest) is None


def table_damage(workdir: Workdir, table: str, manifest: dict) -> str | None:
    """What is missing from the committed run of `table` (a file the manifest lists that is
    not there with its size), or None when it is intact (or written before files were
    listed)."""
    if "data" not in manifest:
        return None
    listed = {None: manifest.get("files", {}), **manifest.get("sides", {})}
    for side, files in listed.items():
        root = workdir.table_path(table, side, manifest)
        fs, path = fsspec.core.url_to_fs(root)
        found = _sizes(fs, path) if fs.exists(path) else {}
        for name, size in files.items():
            if found.get(name) != size:
                return f"{root}/{name}: {found.get(name)} bytes, the manifest lists {size}"
    return None


def leftovers(workdir: Workdir, stage: Stage, manifest: dict | None) -> list[str]:
    """What runs of `stage` left beside the committed output: run directories no manifest
    names, manifest temporaries, the stage's stale files in `.staging/`."""
    fs, table_dir = fsspec.core.url_to_fs(workdir.path(stage.table))
    keep = manifest.get("data") if manifest else None
    legacy = manifest is not None and keep is None  # the data is in <table>/ itself
    found = []
    if fs.isdir(table_dir):
        for path in fs.ls(table_dir, detail=False):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if name in (MANIFEST, keep):
                continue
            if legacy and not (name.startswith(RUN_PREFIX) or name.startswith(MANIFEST_TMP)):
                continue
            found.append(path)
    for side_dir in _side_dirs(fs, workdir, stage.table).values():
        found += [
            p for p in fs.ls(side_dir, detail=False) if p.rstrip("/").rsplit("/", 1)[-1] != keep
        ]
    return found + _stale_staging(fs, workdir, stage)


def tidy(workdir: Workdir, stage: Stage, manifest: dict | None, crash: str | None = None) -> None:
    """Remove `leftovers` (under the stage's lock), then directories left empty.

    After a commit this retires the old output; `crash` names the crash point hit before
    each removal."""
    fs, table_dir = fsspec.core.url_to_fs(workdir.path(stage.table))
    for path in leftovers(workdir, stage, manifest):
        if crash:
            crash_point(crash)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=True)
    for directory in [table_dir, *_side_dirs(fs, workdir, stage.table).values()]:
        with contextlib.suppress(FileNotFoundError, OSError):
            if fs.isdir(directory) and not fs.ls(directory, detail=False):
                fs.rmdir(directory)


def _stale_staging(fs: fsspec.AbstractFileSystem, workdir: Workdir, stage: Stage) -> list[str]:
    """Files of `stage` in `.staging/` that no live run uses: its lock's temporaries whose
    process is gone (or older than the grace period), and the staging directories of
    `<table>-<id>` runs of earlier versions older than the grace period."""
    _, staging = fsspec.core.url_to_fs(workdir.staging)
    if not fs.isdir(staging):
        return []
    grace = env_seconds(GRACE_ENV, DEFAULT_GRACE)
    now = time.time()
    stale = []
    for info in fs.ls(staging, detail=True):
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        owner = lock_leftover_pid(name, stage.name)
        if owner is None and not name.startswith(f"{stage.table}-"):
            continue
        mtime = modified_at(info)
        if mtime is None and info["type"] == "directory":  # an object store's prefix
            found = [modified_at(i) for i in fs.find(info["name"], detail=True).values()]
            mtime = max((m for m in found if m is not None), default=None)
        old = now - (mtime or now) > grace
        gone = owner is not None and owner[0] == socket.gethostname() and not pid_alive(owner[1])
        if old or gone:
            stale.append(info["name"])
    return stale


def _side_dirs(fs: fsspec.AbstractFileSystem, workdir: Workdir, table: str) -> dict[str, str]:
    """{side: directory} of the side tables of `table` there are (`<table>.<side>/`)."""
    _, root = fsspec.core.url_to_fs(workdir.root)
    if not fs.isdir(root):
        return {}
    prefix = f"{table}."
    sides = {}
    for path in fs.ls(root, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(prefix) and fs.isdir(path):
            sides[side_name(name[len(prefix) :])] = path.rstrip("/")
    return sides


def _remove_run(fs: fsspec.AbstractFileSystem, workdir: Workdir, table: str, run: str) -> None:
    _, table_dir = fsspec.core.url_to_fs(workdir.path(table))
    for directory in [table_dir, *_side_dirs(fs, workdir, table).values()]:
        if fs.exists(f"{directory}/{run}"):
            fs.rm(f"{directory}/{run}", recursive=True)
        with contextlib.suppress(FileNotFoundError, OSError):
            if fs.isdir(directory) and not fs.ls(directory, detail=False):
                fs.rmdir(directory)


def _sizes(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, int]:
    """{path relative to `root`: bytes} of every file under `root`."""
    root = root.rstrip("/")
    if not fs.exists(root):
        return {}
    return {
        path[len(root) + 1 :]: int(info["size"])
        for path, info in sorted(fs.find(root, detail=True).items())
        if info["type"] == "file"
    }


def _sync_tree(root: str) -> None:
    """fsync every file and directory under a local `root` (and `root`'s parent)."""
    if not os.path.isdir(root):
        return
    for directory, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_dir(directory)
    _sync_dir(os.path.dirname(root))


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")
