"""A Spark standalone cluster on loopback (infra/spark-standalone.sh), for the cluster tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from embedpipe.workdir import Workdir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "spark-standalone.sh"


def free_port(preferred: int | None = None) -> int:
    """`preferred` when nothing listens there, else any free port."""
    if preferred is not None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", preferred)) != 0:
                return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Standalone:
    """A running cluster: its master URL and the directory with pids, logs and work dirs."""

    url: str
    run_dir: Path

    def worker_pid(self, index: int) -> int:
        return int((self.run_dir / f"worker-{index}.pid").read_text())


@contextlib.contextmanager
def standalone_cluster(
    run_dir: Path, workers: int = 2, port: int | None = None
) -> Iterator[Standalone]:
    """Start a master and `workers` workers (1 core, 1 GiB each); stop them in every case."""
    env = {**os.environ, "SPARK_RUN_DIR": str(run_dir)}
    try:
        started = subprocess.run(
            ["bash", str(SCRIPT), "start", str(workers), str(free_port(port))],
            capture_output=True, text=True, env=env, timeout=180,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        yield Standalone(started.stdout.strip().splitlines()[-1], run_dir)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=60)


def table_dir(workdir: Path, table: str, side: str | None = None) -> Path:
    """The committed data directory of a table (or of its side table) of a local workdir."""
    return Path(Workdir(str(workdir)).table_path(table, side))


def rows(path: Path) -> list[tuple]:
    """A table's rows, sorted, lists as tuples (order-free comparison of two runs)."""
    table = pq.read_table(path).to_pylist()
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in r.values()) for r in table)
