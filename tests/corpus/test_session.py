"""The session's task counts, which `embedpipe prepare` polls from another thread for its
progress bar."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from embedpipe.corpus.spark.session import task_counts

pytestmark = pytest.mark.spark


def slow(x: int) -> int:
    time.sleep(0.5)
    return x


def test_task_counts_of_a_running_job(spark: object) -> None:
    """While a 4-task job runs, another thread sees its stage's 4 tasks; after it, none."""
    context = spark.sparkContext  # type: ignore[attr-defined]
    result: list[int] = []
    job = threading.Thread(
        target=lambda: result.extend(context.parallelize(range(4), 4).map(slow).collect())
    )
    job.start()
    seen = []
    while job.is_alive():
        seen.append(task_counts())
        time.sleep(0.05)
    job.join()
    assert result == [0, 1, 2, 3]
    running = [c for c in seen if c is not None and c[1] > 0]
    assert running and all(c[1] == 4 and 0 <= c[0] <= 4 for c in running)
    assert task_counts() == (0, 0)


def test_many_input_files_are_checked_by_a_few_tasks_per_core(spark, tmp_path) -> None:
    """Reading a list of files checks them in a job of a few tasks per core, not one task a
    file (what Spark does past 32 paths): the job that lists 100 files has 8 tasks here."""
    files = []
    for i in range(100):
        path = tmp_path / f"part-{i:03d}.txt"
        path.write_text(f"line {i}\n")
        files.append(str(path))
    context = spark.sparkContext
    assert spark.conf.get("spark.sql.sources.parallelPartitionDiscovery.parallelism") == str(
        4 * context.defaultParallelism
    )
    tracker = context.statusTracker()
    before = set(tracker.getJobIdsForGroup())
    assert spark.read.text(files).count() == 100
    listing = [
        tracker.getStageInfo(s)
        for j in set(tracker.getJobIdsForGroup()) - before
        for s in tracker.getJobInfo(j).stageIds
    ]
    tasks = sorted(s.numTasks for s in listing if s is not None)
    assert tasks and max(tasks) <= 4 * context.defaultParallelism


# A driver that starts a local session: what it launched and forked, and what its workers
# found. `threaded` starts a thread of its own first (as Prefect or a notebook would).
STARTUP_SCRIPT = """
import json, os, sys, threading
from pathlib import Path

from embedpipe.corpus.spark import forkserver, jvm

if sys.argv[1] == "threaded":
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
pyspark_at_launch, launched = [], []
launch = jvm.launch
jvm.launch = lambda properties: pyspark_at_launch.append("pyspark" in sys.modules) or (
    launched.append(launch(properties)) or launched[-1]
)

from embedpipe.config import SparkConfig
from embedpipe.corpus.spark.session import get_spark

spark = get_spark(SparkConfig(master="local[2]", driver_memory="600m"))
from pyspark import SparkContext


def parent(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def where(batches):
    import pyarrow as pa

    for _ in batches:
        pass
    preloaded = all(m.partition(":")[0] in sys.modules for m in forkserver.PRELOAD)
    row = {"daemon_parent": parent(os.getppid()), "preloaded": preloaded}
    yield pa.RecordBatch.from_pylist([row])


schema = "daemon_parent long, preloaded boolean"
rows = spark.range(0, 2, numPartitions=2).mapInArrow(where, schema).collect()
runtime = spark.sparkContext._jvm.java.lang.Runtime.getRuntime()
server = forkserver._server
print(json.dumps({
    "pyspark_at_launch": pyspark_at_launch,
    "jvm_is_launched": SparkContext._gateway.proc.pid == launched[0].process.pid,
    "max_heap_mib": runtime.maxMemory() / 2**20,
    "server": type(server).__name__,
    "server_parent": parent(server.pid),
    "driver": os.getpid(),
    "daemon_parents": sorted({r["daemon_parent"] for r in rows}),
    "preloaded": all(r["preloaded"] for r in rows),
    "server_pid": server.pid,
}))
"""


def start_a_session(tmp_path: Path, mode: str) -> dict[str, object]:
    script = tmp_path / "driver.py"
    script.write_text(STARTUP_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), mode], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_a_session_launches_its_jvm_first_and_forks_the_workers_server(tmp_path: Path) -> None:
    """The JVM is launched before pyspark is imported, with the session's properties (its
    heap is the configured 600m); the workers' server is forked from the driver (which had
    no other thread) and their daemon from it, with PRELOAD imported."""
    seen = start_a_session(tmp_path, "alone")
    assert seen["pyspark_at_launch"] == [False]
    assert seen["jvm_is_launched"] is True
    assert 400 < seen["max_heap_mib"] <= 600  # type: ignore[operator]
    assert seen["server"] == "ForkedServer" and seen["server_parent"] == seen["driver"]
    assert seen["daemon_parents"] == [seen["server_pid"]] and seen["preloaded"] is True


@pytest.mark.slow
def test_a_driver_with_threads_of_its_own_spawns_the_workers_server(tmp_path: Path) -> None:
    """A process whose own threads might be importing is not forked: the server is a new
    interpreter (spawned), and the workers still fork from it with PRELOAD imported."""
    seen = start_a_session(tmp_path, "threaded")
    assert seen["pyspark_at_launch"] == [False]
    assert seen["server"] == "Popen" and seen["server_parent"] == seen["driver"]
    assert seen["daemon_parents"] == [seen["server_pid"]] and seen["preloaded"] is True


def test_the_command_closes_the_jvm_link_of_a_session_it_started(tmp_path: Path) -> None:
    """`embedpipe` (`embedpipe.__main__`) shuts py4j's link to the JVM it started down as
    its last act (`close_gateway`): the JVM then leaves sooner once the command exits."""
    script = tmp_path / "command.py"
    script.write_text(
        "import embedpipe.cli\n"
        "from embedpipe.config import SparkConfig\n"
        "from embedpipe.corpus.spark.session import get_spark\n"
        "def a_command():\n"
        "    spark = get_spark(SparkConfig(master='local[1]', driver_memory='512m'))\n"
        "    print(spark.range(3).count())\n"
        "embedpipe.cli.main = a_command\n"
        "from embedpipe.__main__ import main\n"
        "from pyspark import SparkContext\n"
        "main()\n"
        "print(SparkContext._gateway._gateway_client.is_connected)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["3", "False"]
