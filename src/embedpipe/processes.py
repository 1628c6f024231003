"""Child processes (spark-submit, torchrun) whose output streams to a log, line by line.

The flow's tasks run these for hours; their output belongs in the Prefect run log as it
happens, and an interrupted task (a Prefect timeout, Ctrl-C, a cancelled run) must not
leave a JVM or a torchrun worker behind. So a child starts in its own session, and on any
exception its whole tree gets SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

GRACE_SECONDS = 20.0  # between SIGTERM and SIGKILL (torchrun forwards SIGTERM to its workers)


@dataclass
class Finished:
    """A child that ended: its exit code and what it printed."""

    returncode: int
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def tail(self, n: int = 40) -> str:
        return "\n".join((self.stdout + self.stderr)[-n:])


def run_logged(
    command: Sequence[str],
    log: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    prefix: str = "",
    timeout: float | None = None,
) -> Finished:
    """Run `command`, sending each stdout and stderr line to `log` as it comes.

    The calling thread does all the logging (loggers bound to a task run stay in their
    context) and waits in short steps, so a timeout or an exception raised into it ends
    the child's process tree instead of waiting for it. `timeout` (seconds) is a hard
    limit of this call: the tree is ended and `TimeoutError` raised.
    """
    proc = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    readers = [
        threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
    ]
    for reader in readers:
        reader.start()
    finished = Finished(returncode=-1)
    deadline = None if timeout is None else time.monotonic() + timeout
    open_streams = 2
    try:
        while open_streams:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{command[0]} ran longer than {timeout} s")
            try:
                name, line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                continue
            line = line.rstrip("\n")
            getattr(finished, name).append(line)
            log(prefix + line)
        while proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{command[0]} ran longer than {timeout} s")
            time.sleep(0.1)
    except BaseException:
        end_tree(proc.pid)
        raise
    finished.returncode = proc.returncode
    return finished


def _pump(stream, name: str, lines: queue.Queue) -> None:  # noqa: ANN001 - a text stream
    for line in stream:
        lines.put((name, line))
    lines.put((name, None))


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        below = [c for p in frontier for c in children.get(p, [])]
        found.extend(below)
        frontier = below
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def end_tree(pid: int, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM `pid`, its process group and every descendant; SIGKILL what is left after `grace`.

    Descendants are listed before signalling, while they still hang below `pid`; those
    that started sessions of their own (Spark's JVMs, torchrun's workers) are reached too.
    """
    tree = [pid, *descendants(pid)]
    _signal_all(pid, tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        _reap(pid)
        time.sleep(0.1)
    tree += [p for p in descendants(pid) if p not in tree]
    _signal_all(pid, tree, signal.SIGKILL)
    _reap(pid)


def _signal_all(leader: int, pids: list[int], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, sig)
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
