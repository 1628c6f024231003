"""A claim on one stage of one workdir, so that two runs of a stage never interleave.

`<workdir>/.staging/<stage>.lock` names who runs the stage: host, pid (and the process's
start time, so a reused pid is not taken for the holder), when it started and a heartbeat.
It is created exclusively: on a local path the content is written to a temporary file and
hard-linked to the lock's name (the link fails when the lock exists, and the lock is never
seen empty); elsewhere through fsspec's `open(..., "xb")` (S3's and GCS's conditional
create, a single PUT). While the lock is held a thread rewrites its heartbeat.

A second run waits for the lock up to `wait` seconds, then refuses with `StageBusyError`,
naming the workdir, the stage and the holder. A lock is stale, and taken over with a
warning, when its holder ran on this host and is gone (no such pid, a zombie, or a pid now
used by a later process), was an earlier run in this very process, or has not renewed its
heartbeat for `stale_after` seconds (a holder on another host, or a stopped process: before
it commits, a holder checks that the lock is still its own, and gives up when it is not).

`EMBEDPIPE_STAGE_LOCK_WAIT` and `EMBEDPIPE_STAGE_LOCK_STALE` (seconds) change the defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from datetime import datetime, timezone
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from embedpipe.faults import crash_point

WAIT_ENV = "EMBEDPIPE_STAGE_LOCK_WAIT"
STALE_ENV = "EMBEDPIPE_STAGE_LOCK_STALE"
DEFAULT_WAIT = 0.0  # refuse at once: a stage may run for hours
DEFAULT_STALE = 600.0  # seconds without a heartbeat after which a holder counts as gone
POLL = 0.2  # seconds between two looks at a held lock
TMP_SUFFIX = ".tmp"  # <stage>.lock.<host>.<pid>.<id>.tmp: a lock's content before its link

_held: set[str] = set()  # tokens of the locks this process holds now


class StageBusyError(RuntimeError):
    """Another run holds the stage's lock (the message names the workdir, stage, holder)."""


class StageLockLost(RuntimeError):
    """The lock was taken over (this run was judged gone): it must not commit."""


def env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a number of seconds") from None


def _process_start(pid: int) -> int | None:
    """The start time of a process (clock ticks after boot; /proc), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # Fields after the command (which may hold spaces and parentheses): state is the 3rd.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace").rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process `pid` of this host runs (and, given its start time, is that one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if _process_state(pid) == "Z":
        return False  # killed, not yet reaped by its parent
    return not (start is not None and _process_start(pid) not in (None, start))


def describe(holder: dict[str, Any]) -> str:
    """`host pid N since <time>` of a lock's content."""
    return f"host {holder.get('host')} pid {holder.get('pid')} since {holder.get('started')}"


class StageLock:
    """The lock of `stage` on `workdir` (see the module's docstring). Use as a context
    manager or with `acquire` and `release`."""

    def __init__(
        self,
        workdir: str,
        stage: str,
        url: str,
        wait: float | None = None,
        stale_after: float | None = None,
    ) -> None:
        self.workdir, self.stage, self.url = workdir, stage, url
        self.wait = env_seconds(WAIT_ENV, DEFAULT_WAIT) if wait is None else wait
        self.stale_after = (
            env_seconds(STALE_ENV, DEFAULT_STALE) if stale_after is None else stale_after
        )
        self.fs, self.path = fsspec.core.url_to_fs(url)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started = datetime.now(timezone.utc).isoformat()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.lost = False

    # ------------------------------------------------------------------ content

    @property
    def _tmp_prefix(self) -> str:
        """Temporary files of this lock: `<lock>.<host>.<pid>.t<id>` (see lock_leftover_pid)."""
        return f"{self.path}.{self.host}.{self.pid}.t{self.token[:8]}"

    def _content(self) -> bytes:
        return json.dumps(
            {
                "stage": self.stage,
                "workdir": self.workdir,
                "host": self.host,
                "pid": self.pid,
                "pid_start": _process_start(self.pid),
                "started": self.started,
                "heartbeat": time.time(),
                "token": self.token,
            },
            indent=2,
        ).encode()

    def read(self) -> tuple[dict[str, Any] | None, bytes | None]:
        """(the holder, the raw content) of the lock now; (None, None) when there is none;
        ({}, raw) when the content is unreadable."""
        try:
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None, None
        try:
            holder = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}, raw
        return (holder if isinstance(holder, dict) else {}), raw

    def _mtime(self) -> float | None:
        try:
            info = self.fs.info(self.path)
        except FileNotFoundError:
            return None
        return modified_at(info)

    # ------------------------------------------------------------------ create, take over

    def _create(self) -> bool:
        """Create the lock with this run's content unless it exists; True when created."""
        data = self._content()
        if self.local:
            directory = os.path.dirname(self.path)
            os.makedirs(directory, exist_ok=True)
            tmp = f"{self._tmp_prefix}{TMP_SUFFIX}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        # An object store that ignores "x" would let two writers both "create": the one whose
        # content is there is the holder.
        holder, _ = self.read()
        return bool(holder) and holder.get("token") == self.token

    def stale_reason(self, holder: dict[str, Any] | None, raw: bytes | None) -> str | None:
        """Why the lock's holder counts as gone, or None while it may still run."""
        if holder is None:
            return None
        if not holder:
            mtime = self._mtime()
            if mtime is None or time.time() - mtime > self.stale_after:
                return f"its content is unreadable ({raw[:60]!r}) and it is old"
            return None
        if holder.get("host") == self.host and isinstance(holder.get("pid"), int):
            pid = holder["pid"]
            if pid == self.pid:
                if holder.get("token") not in _held:
                    return "it was left by an earlier run in this process"
            elif not pid_alive(pid, holder.get("pid_start")):
                return f"process {pid} is gone"
        beat = holder.get("heartbeat")
        if isinstance(beat, (int, float)) and time.time() - beat > self.stale_after:
            return f"no heartbeat for {time.time() - beat:.0f} s (> {self.stale_after:.0f} s)"
        return None

    def _take_over(self, raw: bytes) -> None:
        """Remove the stale lock whose content is `raw`, unless it changed meanwhile."""
        if self.local:
            aside = f"{self._tmp_prefix}.stale{TMP_SUFFIX}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return
            with open(aside, "rb") as f:
                moved = f.read()
            if moved != raw:  # someone else's fresh lock: put it back (unless one is there)
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
            os.unlink(aside)
            return
        _, now = self.read()
        if now == raw:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)

    # ------------------------------------------------------------------ acquire, release

    def acquire(self) -> StageLock:
        deadline = time.monotonic() + self.wait
        while True:
            if self._create():
                _held.add(self.token)
                try:
                    crash_point("lock.acquired")
                    self._start_heartbeat()
                except BaseException:
                    self.release()
                    raise
                return self
            holder, raw = self.read()
            reason = self.stale_reason(holder, raw)
            if reason is not None:
                warnings.warn(
                    f"taking over the lock of stage {self.stage} on {self.workdir} "
                    f"({self.url}): {describe(holder or {})}: {reason}",
                    stacklevel=2,
                )
                self._take_over(raw or b"")
                continue
            if holder is None:
                continue  # released between our create and our read
            if time.monotonic() >= deadline:
                raise StageBusyError(
                    f"stage {self.stage} on workdir {self.workdir} is being run by "
                    f"{describe(holder)} (lock {self.url}); wait for it to end, or set "
                    f"{WAIT_ENV}=<seconds> to wait. A holder that is gone is taken over "
                    f"after {self.stale_after:.0f} s without a heartbeat ({STALE_ENV})"
                )
            time.sleep(POLL)

    def check(self) -> None:
        """Raise StageLockLost unless the lock is still this run's."""
        holder, _ = self.read()
        if self.lost or not holder or holder.get("token") != self.token:
            self.lost = True
            shown = describe(holder) if holder else "nobody"
            raise StageLockLost(
                f"the lock of stage {self.stage} on {self.workdir} was taken over (now held "
                f"by {shown}): this run was judged gone and does not commit"
            )

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        _held.discard(self.token)
        holder, _ = self.read()
        if holder and holder.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)

    def __enter__(self) -> StageLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ heartbeat

    def _start_heartbeat(self) -> None:
        interval = max(self.stale_after / 10, 0.05)
        self._stop.clear()
        self._beat = threading.Thread(
            target=self._heartbeat, args=(interval,), name=f"lock-{self.stage}", daemon=True
        )
        self._beat.start()

    def _heartbeat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                holder, _ = self.read()
                if not holder or holder.get("token") != self.token:
                    self.lost = True
                    return
                self._rewrite()
            except Exception as e:  # noqa: BLE001 - a missed beat is retried; commit checks
                warnings.warn(f"lock {self.url}: heartbeat failed ({e})", stacklevel=1)

    def _rewrite(self) -> None:
        data = self._content()
        if self.local:
            tmp = f"{self._tmp_prefix}.beat{TMP_SUFFIX}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:
            self.fs.pipe_file(self.path, data)


def lock_leftover_pid(name: str, stage: str) -> tuple[str, int] | None:
    """(host, pid) of a temporary file a lock of `stage` left in the staging directory
    (`<stage>.lock.<host>.<pid>.t<id>[.stale|.beat].tmp`), None for another name."""
    prefix = f"{stage}.lock."
    if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
        return None
    parts = name[len(prefix) : -len(TMP_SUFFIX)].split(".")
    # The host may hold dots: the pid is the last all-digit field (the id starts with t).
    for i in range(len(parts) - 1, 0, -1):
        if parts[i].isdigit():
            return ".".join(parts[:i]), int(parts[i])
    return None


def modified_at(info: dict[str, Any]) -> float | None:
    """A file's modification time (seconds) from an fsspec `info`, on any backend."""
    value = info.get("mtime") or info.get("LastModified") or info.get("updated")
    value = value or info.get("created")
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        return None
    return float(value) if value is not None else None
