"""The stages through spark-submit on a standalone master with two workers (loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedpipe.config import load_config
from embedpipe.corpus.registry import STAGES
from embedpipe.corpus.spark.submit import submit_stages
from embedpipe.corpus.stages import prepare

from .conftest import rows, standalone_cluster, table_dir
from .test_determinism import table_files

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.spark]


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with standalone_cluster(tmp_path_factory.mktemp("standalone")) as cluster:
        yield cluster.url


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
    local_manifests = prepare(spark, local)
    reported: list[str] = []
    lines: list[str] = []
    manifests = submit_stages(
        list(STAGES), remote, log=lines.append, done=lambda stage, _: reported.append(stage)
    )
    assert reported == list(STAGES)  # one application; each stage reported as it committed
    # ...from the job's own manifest lines (client mode), not read back from the workdir.
    printed = [line for line in lines if line.startswith("[spark-submit] {")]
    assert [json.loads(line.split(" ", 1)[1])["stage"] for line in printed] == list(STAGES)
    assert not any(m["skipped"] for m in manifests.values())
    for stage, manifest in manifests.items():
        assert manifest["counts"] == local_manifests[stage]["counts"], stage
    for table in ("tokens", "vocab", "sequences", "buckets", "cooccur"):
        local_rows, remote_rows = (
            rows(table_dir(tmp_path / "local", table)),
            rows(table_dir(tmp_path / "remote", table)),
        )
        if table == "tokens":  # seq_id depends on partitioning; the content does not
            local_rows = sorted(r[1:] for r in local_rows)
            remote_rows = sorted(r[1:] for r in remote_rows)
        assert local_rows == remote_rows, table
    # Both runs split this small input alike, so every file is the same, byte for byte.
    assert table_files(tmp_path / "remote") == table_files(tmp_path / "local")
