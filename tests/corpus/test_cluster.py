"""The stages through spark-submit on a standalone master with two workers (loopback)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from embedpipe.config import load_config
from embedpipe.corpus.stages import STAGE_FUNCTIONS, prepare
from embedpipe.corpus.submit import submit_stage

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.spark]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "spark-standalone.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"SPARK_RUN_DIR": str(tmp_path_factory.mktemp("standalone"))}
    import os

    env = {**os.environ, **env}
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", "2", str(free_port())],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=60)


def rows(path: Path) -> list[tuple]:
    table = pq.read_table(path).to_pylist()
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in r.values()) for r in table)


def test_standalone_cluster_gives_the_local_tables(master: str, spark, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(f"the cat {i % 7} sat on the mat number {i % 13} today" for i in range(400))
    )
    common = [f'corpus.paths=["{corpus}"]', "vocab.min_count=2", "cooccur.num_shards=2"]
    local = load_config(None, [f"workdir={tmp_path / 'local'}", *common])
    remote = load_config(
        None,
        [f"workdir={tmp_path / 'remote'}", *common, "spark.submit=true", f"spark.master={master}",
         "spark.driver_memory=1g"],
    )  # fmt: skip
    prepare(spark, local)
    manifests = {stage: submit_stage(stage, remote) for stage in STAGE_FUNCTIONS}
    assert not any(m["skipped"] for m in manifests.values())
    for table in ("tokens", "vocab", "sequences", "buckets", "cooccur"):
        local_rows, remote_rows = (
            rows(tmp_path / "local" / table),
            rows(tmp_path / "remote" / table),
        )
        if table == "tokens":  # seq_id depends on partitioning; the content does not
            local_rows = sorted(r[1:] for r in local_rows)
            remote_rows = sorted(r[1:] for r in remote_rows)
        assert local_rows == remote_rows, table
