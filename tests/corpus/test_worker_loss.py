"""A Spark worker killed while a stage job runs on the standalone cluster: the job completes
on the remaining worker and writes the same table as a local[*] run."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from embedpipe.config import load_config
from embedpipe.corpus.spark.submit import submit_stage
from embedpipe.corpus.stages import prepare
from embedpipe.processes import alive, descendants

from .conftest import rows, standalone_cluster, table_dir

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.spark]

MASTER_PORT = 7177  # this area's standalone master port (another free one if taken)


def running_task_on(run_dir: Path) -> int | None:
    """The worker (1 or 2) whose executor has started a task, if any (executor logs)."""
    for index in (1, 2):
        for log in (run_dir / f"worker-{index}").glob("app-*/*/stderr"):
            if "Running task" in log.read_text(errors="replace"):
                return index
    return None


def test_a_killed_worker_does_not_change_the_table(spark, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    words = [f"w{i}" for i in range(300)]
    corpus.write_text(
        "\n".join(" ".join(words[(i * 7 + j * j) % 300] for j in range(14)) for i in range(12000))
    )
    common = [
        f'corpus.paths=["{corpus}"]', "vocab.min_count=1", "cooccur.window=5",
        "cooccur.num_shards=4",
    ]  # fmt: skip
    local = load_config(None, [f"workdir={tmp_path / 'local'}", *common])
    prepare(spark, local)
    # The cluster run starts from the same upstream tables (manifests included).
    for table in ("tokens", "vocab", "sequences"):  # with their side tables (tokens.counts)
        for directory in (tmp_path / "local").glob(f"{table}*"):
            shutil.copytree(directory, tmp_path / "remote" / directory.name)

    with standalone_cluster(tmp_path / "standalone", workers=2, port=MASTER_PORT) as cluster:
        remote = load_config(
            None,
            [f"workdir={tmp_path / 'remote'}", *common, "spark.submit=true",
             f"spark.master={cluster.url}", "spark.driver_memory=1g",
             "spark.shuffle_partitions=6", 'spark.conf={"spark.ui.enabled": "false"}'],
        )  # fmt: skip
        lines: list[str] = []
        outcome: dict[str, object] = {}

        def submit() -> None:
            try:
                outcome["manifest"] = submit_stage("cooccur", remote, log=lines.append)
            except BaseException as e:  # noqa: BLE001 - reported by the test thread
                outcome["error"] = e

        job = threading.Thread(target=submit)
        started = time.monotonic()
        job.start()
        victim = None
        while job.is_alive() and victim is None:
            victim = running_task_on(cluster.run_dir)
            time.sleep(0.1)
        assert victim is not None, "the job ended before any executor ran a task"
        # The worker's JVM and the executor it launched die at once, as with a lost machine.
        worker = cluster.worker_pid(victim)
        machine = [worker, *descendants(worker)]
        for pid in machine:
            os.kill(pid, signal.SIGKILL)
        killed_after = time.monotonic() - started
        job.join(timeout=600)
        assert not job.is_alive(), "the job did not finish after the worker died"
        assert not any(alive(pid) for pid in machine)
        assert alive(cluster.worker_pid(3 - victim))

    assert "error" not in outcome, f"{outcome.get('error')}\n" + "\n".join(lines[-60:])
    manifest = outcome["manifest"]
    assert not manifest["skipped"] and manifest["stage"] == "cooccur"
    print(f"worker {victim} killed {killed_after:.1f} s into the job")
    # The driver saw the executor go and ran its tasks elsewhere.
    assert any("lost" in line.lower() and "executor" in line.lower() for line in lines), lines[-40:]
    local_manifest = local_manifest_of(tmp_path / "local")
    assert manifest["counts"]["entries"] == local_manifest["counts"]["entries"]
    remote_rows = rows(table_dir(tmp_path / "remote", "cooccur"))
    assert remote_rows == rows(table_dir(tmp_path / "local", "cooccur"))


def local_manifest_of(workdir: Path) -> dict:
    from embedpipe.workdir import Workdir

    return Workdir(str(workdir)).require("cooccur")
