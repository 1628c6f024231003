"""The fork server: local sessions' worker daemons fork from a process with their imports done."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from embedpipe.corpus.spark import forkserver

pytestmark = pytest.mark.skipif(not forkserver.supported(), reason="needs fork and fd passing")

# A daemon as Spark launches it: `python -m embedpipe.corpus.spark.daemon` with the address.
DAEMON = [sys.executable, "-m", "embedpipe.corpus.spark.daemon"]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: a unix socket's path holds at most 107 bytes."""
    folder = tempfile.mkdtemp(prefix="fs-")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def server(short_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    path = str(short_dir / forkserver.SOCKET)
    process = forkserver.spawn(path, preload=("pyspark.daemon",))
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert process.poll() is None and time.monotonic() < deadline, "no server socket"
        time.sleep(0.05)
    yield process, path
    if process.stdin is not None:
        process.stdin.close()
    process.wait(timeout=30)


def launch_daemon(path: str, sock_dir: Path) -> subprocess.Popen[bytes]:
    """A daemon on pipes, told (in its environment) to listen on a unix socket in `sock_dir`:
    pyspark's daemon then writes that socket's path, length first, to its stdout."""
    env = {
        **os.environ,
        forkserver.ENV: path,
        "PYTHON_UNIX_DOMAIN_ENABLED": "true",
        "PYTHON_WORKER_FACTORY_SOCK_DIR": str(sock_dir),
    }
    return subprocess.Popen(DAEMON, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


def listening_socket(daemon: subprocess.Popen[bytes]) -> str:
    assert daemon.stdout is not None
    (size,) = struct.unpack("!i", daemon.stdout.read(4))
    return daemon.stdout.read(size).decode()


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_the_daemon_runs_forked_from_the_server_with_the_launched_ones_streams_and_env(
    server: tuple[subprocess.Popen[bytes], str], short_dir: Path
) -> None:
    process, path = server
    sock_dir = short_dir / "socks"
    sock_dir.mkdir()
    daemon = launch_daemon(path, sock_dir)
    listening = listening_socket(daemon)  # read from the launched process's own stdout
    assert Path(listening).parent == sock_dir  # its environment reached pyspark's daemon
    assert forked_from(process), "no daemon forked from the server"
    assert daemon.stdin is not None
    daemon.stdin.close()  # as Spark does: pyspark's daemon ends, then the launched process
    assert daemon.wait(timeout=30) == 0
    assert not Path(listening).exists()


def forked_from(parent: subprocess.Popen[bytes]) -> list[int]:
    """The live processes whose parent is `parent`."""
    children = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        with contextlib.suppress(OSError, IndexError):
            if parent_of(pid) == parent.pid:
                children.append(pid)
    return children


def test_sigterm_to_the_launched_daemon_stops_the_forked_one(
    server: tuple[subprocess.Popen[bytes], str], short_dir: Path
) -> None:
    process, path = server
    daemon = launch_daemon(path, short_dir)
    listening_socket(daemon)
    (forked,) = forked_from(process)
    daemon.send_signal(signal.SIGTERM)  # Spark's `destroy()` of its daemon
    daemon.wait(timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{forked}").exists():
        assert time.monotonic() < deadline, "the forked daemon did not stop"
        time.sleep(0.05)


def test_without_a_server_the_daemon_runs_pyspark_itself(short_dir: Path) -> None:
    assert forkserver.request_daemon(str(short_dir / "none.sock"), sys.path) is False
    daemon = launch_daemon(str(short_dir / "none.sock"), short_dir)
    listening = listening_socket(daemon)
    assert Path(listening).exists()
    assert daemon.stdin is not None
    daemon.stdin.close()
    daemon.wait(timeout=30)  # pyspark's own daemon, which exits 1 on a closed stdin
    assert not Path(listening).exists()


def test_a_request_for_another_pyspark_is_refused(
    server: tuple[subprocess.Popen[bytes], str], tmp_path: Path
) -> None:
    """A SPARK_HOME's pyspark of another version must not run on the server's modules."""
    _, path = server
    other = tmp_path / "other"
    (other / "pyspark").mkdir(parents=True)
    (other / "pyspark" / "__init__.py").write_text("")
    assert forkserver.request_daemon(path, [str(other), *sys.path]) is False


def test_the_server_ends_and_removes_its_socket_when_its_stdin_closes(
    server: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, path = server
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=30) == 0
    assert not os.path.exists(path)


def preloaded(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Whether a task finds the PRELOAD modules imported (the cooccur kernels compiled, the
    server's objects frozen) before it imports anything, and where its daemon forked from."""
    import gc
    import os
    import sys

    modules = [entry.partition(":")[0] for entry in forkserver.PRELOAD]
    kernels = sys.modules.get("embedpipe.corpus.kernels")
    found = all(m in sys.modules for m in modules) and bool(kernels.count_windows.signatures)
    found = found and gc.get_freeze_count() > 0  # what it imported is out of gc's way
    for _ in batches:
        pass
    stat = Path(f"/proc/{os.getppid()}/stat").read_text()
    server = int(stat.rsplit(")", 1)[1].split()[1])
    yield pa.RecordBatch.from_pylist([{"preloaded": found, "server": server}])


@pytest.mark.spark
def test_a_local_sessions_workers_start_with_the_preloaded_modules(spark: object) -> None:
    assert forkserver._server is not None
    rows = (
        spark.range(0, 2, numPartitions=2)  # type: ignore[attr-defined]
        .mapInArrow(preloaded, "preloaded boolean, server long")
        .collect()
    )
    assert rows and all(row["preloaded"] for row in rows)
    assert {row["server"] for row in rows} == {forkserver._server.pid}


def test_off_keeps_pysparks_own_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(forkserver.ENV, forkserver.OFF)
    assert forkserver.start() is None
    assert os.environ[forkserver.ENV] == forkserver.OFF


def test_the_address_is_chosen_once_and_stop_removes_its_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The JVM is launched with the socket's path before the server starts; a server that
    never started leaves no folder behind once the process stops it."""
    monkeypatch.delenv(forkserver.ENV, raising=False)
    monkeypatch.setattr(forkserver, "_path", None)  # not this test process's own session's
    monkeypatch.setattr(forkserver, "_server", None)
    path = forkserver.address()
    assert path is not None and os.environ[forkserver.ENV] == path
    assert forkserver.address() == path and os.path.isdir(os.path.dirname(path))
    forkserver.stop()
    assert not os.path.exists(os.path.dirname(path)) and forkserver.ENV not in os.environ
