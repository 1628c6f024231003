"""Claiming version numbers, for `ArtefactStore`: `.claims/vNNNN`, created exclusively.

A claim records who made it (host, boot, pid namespace, pid and the process's start time)
and when, so that the leftovers of a publish killed before its commit can be told from a
publish still writing: a claimant on this very host (same boot, same pid namespace) whose
process is gone is dead for sure (and one whose process runs is alive, however old its
claim); any other claimant is presumed alive until its claim is older than `ABANDONED_AFTER`
(retention.py).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import uuid
import warnings
from datetime import datetime
from typing import TYPE_CHECKING, Any

from embedpipe.artefacts.files import Location, entry_names, sync, utc_now
from embedpipe.artefacts.layout import CLAIMS, TOMBSTONES, format_version, version_number

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

PROBE_PREFIX = ".probe-"  # the exclusive-create probe's file in .claims/


@functools.lru_cache(maxsize=1)
def _machine() -> dict[str, str | None]:
    """What identifies this host's process table: host name, boot id, pid namespace."""
    boot = pidns = None
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.readlink("/proc/self/ns/pid")
    return {"host": socket.gethostname(), "boot": boot, "pidns": pidns}


def _start_time(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot, from /proc), None if unknown;
    "zombie" for a process that has exited but was not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return "zombie" if fields[0] in ("Z", "X") else fields[19]


def claim_record() -> dict[str, Any]:
    """The content of a new claim by this process."""
    return {"claimed": utc_now(), **_machine(), "pid": os.getpid(),
            "started": _start_time(os.getpid()), "token": uuid.uuid4().hex}  # fmt: skip


def claimant_alive(record: dict[str, Any]) -> bool | None:
    """Whether the process that made claim `record` still runs: known only when it ran on
    this host, in this boot and pid namespace (False: its pid is gone or now names another
    process); None otherwise."""
    here = _machine()
    if here["boot"] is None or any(record.get(k) != v for k, v in here.items()):
        return None
    pid = record.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # it exists, owned by someone else
    started = _start_time(pid)
    if started is None:
        return None
    return started != "zombie" and started == record.get("started")


class Claims:
    """Claiming numbers; mixed into ArtefactStore, whose layout it uses."""

    if TYPE_CHECKING:  # provided by ArtefactStore
        fs: AbstractFileSystem
        root: Location
        _exclusive: bool | None

        def _path(self, *parts: str) -> str: ...

    def _claim(self, name: str) -> str:
        """Create `.claims/vNNNN` exclusively for the next free number; return 'vNNNN'."""
        claims = self._path(name, CLAIMS)
        self.fs.makedirs(claims, exist_ok=True)
        exclusive = self._exclusive_create_works(claims)
        record = claim_record()
        n = self._max_number(name) + 1
        while True:
            version = format_version(n)
            try:
                self._create(f"{claims}/{version}", json.dumps(record).encode(), exclusive)
            except FileExistsError:
                n = max(n, self._max_number(name)) + 1
                continue
            return version

    def _claim_record(self, name: str, version: str) -> dict[str, Any] | None:
        """The record of `version`'s claim, None when there is none (or it is unreadable)."""
        try:
            record = json.loads(self.fs.cat_file(self._path(name, CLAIMS, version)))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _abandoned(self, name: str, version: str, cutoff: datetime) -> bool:
        """True when the publish that claimed `version` will never commit it: its claimant is
        known to be dead, or (not known to be alive) it claimed before `cutoff`. A directory
        not claimed by a publish of ours is not ours to judge (False)."""
        record = self._claim_record(name, version)
        if record is None:
            return False
        alive = claimant_alive(record)
        if alive is not None:
            return not alive
        try:
            return datetime.fromisoformat(record["claimed"]) < cutoff
        except (KeyError, TypeError, ValueError):
            return False

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
            probe = f"{directory}/{PROBE_PREFIX}{uuid.uuid4().hex}"
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
