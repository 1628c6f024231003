"""The session's task counts, which `embedpipe prepare` polls from another thread for its
progress bar."""

from __future__ import annotations

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


def test_session_imports_run_on_a_thread(tmp_path, monkeypatch) -> None:
    """The modules the session's first Java call imports are imported on a thread, so the
    JVM's start-up and their import overlap; a missing or imported module is skipped."""
    import sys
    import types

    from embedpipe.corpus.spark import session

    gate = types.ModuleType("session_import_gate")
    gate.event = threading.Event()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "session_import_gate", gate)
    (tmp_path / "slow_session_module.py").write_text(
        "import session_import_gate\nsession_import_gate.event.wait(10)\nVALUE = 7\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_session_module", raising=False)
    monkeypatch.setattr(
        session, "SESSION_IMPORTS", ("slow_session_module", "json", "no_such_module_here")
    )
    session.import_while_jvm_starts()  # returns while the import still waits at the gate
    thread = next(t for t in threading.enumerate() if t.name == "embedpipe-session-imports")
    assert thread.is_alive()
    gate.event.set()  # type: ignore[attr-defined]
    thread.join(10)
    assert sys.modules["slow_session_module"].VALUE == 7
    assert "no_such_module_here" not in sys.modules


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
