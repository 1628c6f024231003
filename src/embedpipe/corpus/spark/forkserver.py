"""A process with the Python workers' modules imported, from which the worker daemon of
each local session forks.

Spark starts a session's Python daemon only when its first Python task runs; the daemon
then forks a worker per task slot, and every worker imports pyspark's worker, pyarrow,
pandas (pyarrow's first conversion of a Python value imports it), the stage modules and,
in the cooccur stage, numba: the same imports in each worker, on the critical path, and
compiled from source wherever no bytecode is cached. Here the driver names the server's
socket before it launches the JVM (`address`), then starts the server (`start`): forked
from itself once its own imports are done, so the server shares them and only imports the
rest of `PRELOAD` (`fork_server`), or, where the driver runs threads of its own, spawned as
a new interpreter that imports all of it (`spawn`). It imports at idle priority, on what
CPU the session's start leaves. The daemon Spark launches (`embedpipe.corpus.spark.daemon`)
hands its standard streams, environment, working directory and module path to the server
(`request_daemon`), which forks a child that runs pyspark's daemon, unchanged, with them;
the workers that daemon forks start with everything imported.

The server serves the process that started it and exits when that process closes its
end of the server's stdin pipe (it ends, or calls `stop`). A daemon that cannot reach a
server, or whose path finds another pyspark than the server's, runs pyspark's daemon
itself, as before. The socket lives in a private temporary folder (mode 0700), so only its
user reaches it. Imports nothing but the standard library: the daemon imports it before
fixing its path.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import importlib.machinery
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from typing import Any, BinaryIO

# The socket's path, for the daemons Spark launches; a user's `off` keeps pyspark's daemon.
ENV = "EMBEDPIPE_SPARK_FORKSERVER"
OFF = "off"
SOCKET = "forkserver.sock"
FOLDER_PREFIX = "embedpipe-forkserver-"  # `start`'s folders, which the server removes
# What every worker of a local session imports: pyspark's daemon and worker, pandas
# (through pyarrow), pyarrow's Parquet and dataset readers and the stages' task code;
# `module:function` also calls the function: the cooccur kernels (numba) loaded and run once.
PRELOAD = (
    "pyspark.daemon",
    "pyspark.worker",
    "pandas",
    "pyarrow.parquet",
    "pyarrow.dataset",
    "embedpipe.corpus.stages",
    "embedpipe.corpus.cooccur:warm_up",
)
_HEADER = struct.Struct("!I")
_server: subprocess.Popen[bytes] | ForkedServer | None = None
_path: str | None = None  # the socket of this process's server, once chosen


def supported() -> bool:
    """Linux only: it forks after importing numpy, pandas and numba (and running numba's
    LLVM), which is tested there; macOS libraries may not survive a fork (Objective-C's
    fork-safety checks), and Windows cannot fork. Elsewhere pyspark's daemon runs as before."""
    return sys.platform == "linux" and hasattr(socket, "send_fds")


def spawn(path: str, preload: tuple[str, ...] = PRELOAD) -> subprocess.Popen[bytes]:
    """Start a server listening at `path`; it ends when its stdin (a pipe) closes.

    Its own session: a terminal's Ctrl-C goes to the driver, which stops Spark's jobs, not
    to the daemons (the JVM starts its own with SIGINT ignored)."""
    # Spark runs its workers with PYTHONHASHSEED set (0 unless the driver set one).
    env = {**os.environ, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")}
    command = [sys.executable, "-m", __name__, path, *preload]
    return subprocess.Popen(command, stdin=subprocess.PIPE, env=env, start_new_session=True)


def address() -> str | None:
    """The socket path of this process's server, chosen on the first call and put in ENV
    of this process's environment (the JVM, launched later, passes it on to the daemons);
    None where the server is off or unsupported. The server may start after the JVM: a
    daemon that finds no server at the path runs pyspark's daemon itself."""
    global _path
    if not supported() or os.environ.get(ENV) == OFF:
        return None
    if _path is None:
        _path = os.path.join(tempfile.mkdtemp(prefix=FOLDER_PREFIX), SOCKET)
        atexit.register(stop)
    os.environ[ENV] = _path
    return _path


def start(fork: bool = False) -> str | None:
    """Start this process's server at `address()` (once); its path, None where off.

    `fork`: fork it from this process (see `fork_server` for when that is safe); it then
    starts with what this process has imported and imports only the rest of PRELOAD.
    Otherwise a new interpreter imports all of PRELOAD."""
    global _server
    path = address()
    if path is None:
        return None
    if _server is None or _server.poll() is not None:
        _server = fork_server(path) if fork else spawn(path)
    return path


class ForkedServer:
    """A server forked from this process: what `stop` (and the tests) use of a Popen."""

    def __init__(self, pid: int, stdin: BinaryIO) -> None:
        self.pid = pid
        self.stdin: BinaryIO | None = stdin  # closing it ends the server
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): it has ended
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"fork server {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def fork_server(path: str, preload: tuple[str, ...] = PRELOAD) -> ForkedServer:
    """Fork a server listening at `path` from this process. The caller makes sure that no
    other thread of it is importing, or holds a lock the child needs (`session`).

    The child keeps this process's objects out of the garbage collector (none of them is
    finalised there), closes every descriptor it inherited but the standard streams (a
    pipe to the JVM held open would keep the JVM alive), opens its own stream objects on
    them, and runs in its own session, as a spawned one does. Python's hash seed is this
    process's: pyspark needs one seed across a session's workers, and they all fork from
    here."""
    read, write = os.pipe()
    for stream in (sys.stdout, sys.stderr):  # nothing buffered here is written twice
        with contextlib.suppress(Exception):
            stream.flush()
    with warnings.catch_warnings():  # Python 3.12+ warns of any thread; see the doc above
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; the tests see what it serves
        code = 1
        try:
            gc.freeze()
            os.setsid()
            os.dup2(read, 0)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            # Streams of its own on fds 0-2, as a new interpreter's: this process may have
            # replaced its own (pytest, rich), and pyspark's daemon writes to sys.stdout's.
            sys.stdin = open(0, closefd=False)  # noqa: SIM115
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            serve(path, preload)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(read)
    return ForkedServer(pid, os.fdopen(write, "wb"))


def stop() -> None:
    """End this process's server and remove its folder."""
    global _server, _path
    server, _server = _server, None
    if server is not None:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    path, _path = _path, None
    if path is not None:  # the server removes it; not if it was killed or never started
        if os.environ.get(ENV) == path:
            del os.environ[ENV]
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def pyspark_origin(path: list[str]) -> str | None:
    """The file `import pyspark` loads on `path` (None if none)."""
    spec = importlib.machinery.PathFinder.find_spec("pyspark", path)
    return os.path.realpath(spec.origin) if spec is not None and spec.origin else None


def request_daemon(path: str, sys_path: list[str]) -> bool:
    """Have the server at `path` fork a daemon on this process's standard streams and wait
    for it to end (True), or False, nothing handed over, when no server takes the request."""
    request = {
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "path": sys_path,
        "pyspark": pyspark_origin(sys_path),
    }
    data = json.dumps(request).encode()
    # SIGTERM waits until the daemon's pid is known (then it is passed on) or until no
    # server took the request (then it ends this process, as it would have).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        daemon = _hand_over(path, data)
        if daemon is None:
            return False
        pid, conn = daemon

        def pass_on(number: int, _: Any) -> None:
            """Spark stops its daemon with SIGTERM: so does this (pyspark's daemon then
            stops its workers); the daemon also ends when Spark closes its stdin."""
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, number)

        signal.signal(signal.SIGTERM, pass_on)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    with conn:
        while conn.recv(4096):  # the daemon holds the connection open until it ends
            pass
    return True


def _hand_over(path: str, data: bytes) -> tuple[int, socket.socket] | None:
    """Send our streams and `data` to the server at `path`: (the forked daemon's pid, the
    connection it holds), or None when no server took them."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        socket.send_fds(conn, [_HEADER.pack(len(data))], [0, 1, 2])
        conn.sendall(data)
        reply = _read_exactly(conn, _HEADER.size)
    except OSError:
        reply = None
    if reply is None:  # no server, refused, or it ended: nothing runs on our streams
        conn.close()
        return None
    return _HEADER.unpack(reply)[0], conn


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    """`size` bytes from `conn`, or None when it closes first."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve(path: str, preload: tuple[str, ...]) -> None:
    """Listen at `path`, import `preload`, then fork a daemon per request until stdin ends.

    It listens first, so a daemon launched while it imports waits for it (the connection
    is queued) instead of importing on its own."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the forked daemons reap themselves
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):  # a server killed before left its socket
        os.unlink(path)
    listener.bind(path)
    listener.listen(64)
    try:
        importer = threading.Thread(target=import_idly, args=(preload,), name="preload")
        importer.start()
        importer.join()  # daemons fork from the one thread left, with everything imported
        # pyspark's reused workers run gc.collect() after every task: left out of it, the
        # preloaded objects cost no time there, and their pages stay shared with this one.
        gc.freeze()
        while True:
            ready, _, _ = select.select([listener, 0], [], [])
            if 0 in ready and not os.read(0, 4096):
                return  # the process that started us closed our stdin, or ended
            if listener in ready:
                conn, _ = listener.accept()
                with conn:
                    _fork_daemon(conn, listener)
    finally:
        listener.close()
        os.unlink(path)
        folder = os.path.dirname(path)
        if os.path.basename(folder).startswith(FOLDER_PREFIX):  # even if the driver died
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def import_idly(modules: tuple[str, ...]) -> None:
    """Import `modules` (and call `module:function` entries) on this thread at idle
    priority where the OS has one: the JVM and the driver, starting meanwhile, go first;
    this takes the CPU time they leave. What fails is printed; the server still serves."""
    if hasattr(os, "sched_setscheduler"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only
    for entry in modules:
        module, _, function = entry.partition(":")
        try:
            loaded = importlib.import_module(module)
            if function:
                getattr(loaded, function)()
        except Exception:  # noqa: BLE001 - a worker that needs it will fail and say so
            traceback.print_exc()


def _fork_daemon(conn: socket.socket, listener: socket.socket) -> None:
    """Read one request and fork a child that runs pyspark's daemon on its streams; a
    request whose path finds another pyspark than ours is closed unanswered."""
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    try:
        header += _read_exactly(conn, _HEADER.size - len(header)) or b""
        (size,) = _HEADER.unpack(header)
        request: dict[str, Any] = json.loads(_read_exactly(conn, size) or b"null")
        if len(fds) != 3 or not request or request["pyspark"] != pyspark_origin(sys.path):
            return
        if os.fork() == 0:
            _run_daemon(conn, listener, fds, request)
    finally:
        for fd in fds:
            os.close(fd)


def _run_daemon(
    conn: socket.socket, listener: socket.socket, fds: list[int], request: dict[str, Any]
) -> None:
    """In the forked child: take the daemon's streams, environment, folder and path, tell
    it our pid, and run pyspark's daemon until it exits. Never returns."""
    code = 1
    try:
        listener.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.path[:] = request["path"]
        for number in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)
        conn.sendall(_HEADER.pack(os.getpid()))
        from pyspark.daemon import manager

        manager()
        code = 0
    except SystemExit as stopped:
        code = stopped.code if isinstance(stopped.code, int) else 1
    except BaseException:
        traceback.print_exc()  # to the daemon's stderr: Spark's executor log
    finally:
        os._exit(code)


if __name__ == "__main__":
    serve(sys.argv[1], tuple(sys.argv[2:]))
    os._exit(0)  # a helper with nothing to finalize: skip tearing down its imports
