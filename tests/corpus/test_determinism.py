"""The same input and config give byte-identical tables: every file, row for row and byte
for byte, under the same name (but for the run directory's, unique to each run).

Every table is written by pyarrow from Spark tasks under names fixed by partition (see
`corpus.output`). Spark's own writer would not do: its file names hold a random job id,
and parquet-mr lists each column's encodings in a hash order that changes from one JVM to
the next (seen between a local and a standalone run), so its bytes differ across processes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from embedpipe.config import load_config
from embedpipe.corpus.registry import STAGES
from embedpipe.corpus.stages import prepare

from .conftest import table_dir

pytestmark = pytest.mark.spark

TABLES = ("tokens", "vocab", "sequences", "buckets", "cooccur")
RUN = re.compile(r"^run-\d{8}T\d{6}-[0-9a-f]{8}$")  # a stage run's directory (workdir.py)


def relative_name(root: Path, path: Path) -> str:
    """`path` relative to `root`, the run directory's name (unique to each run) as `run`."""
    return "/".join("run" if RUN.match(part) else part for part in path.relative_to(root).parts)


def parquet_files(root: Path) -> dict[str, Path]:
    """relative_name -> path of every Parquet file under `root` (one run per table only)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.parquet")):
        name = relative_name(root, path)
        assert name not in found, f"two runs of one table under {root}: {found[name]}, {path}"
        found[name] = path
    return found


def table_files(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every Parquet file under a workdir (tables and side
    tables: tokens.counts, tokens.rejects)."""
    return {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in parquet_files(root).items()}


def file_rows(root: Path) -> dict[str, list[dict]]:
    """Relative path -> the rows of every Parquet file under a workdir, in file order."""
    return {n: pq.read_table(p).to_pylist() for n, p in parquet_files(root).items()}


def write_inputs(directory: Path) -> None:
    """Two text files (one gzip, with a line of invalid UTF-8) of mixed scripts."""
    directory.mkdir()
    words = ["the", "cat", "sat", "on", "a", "mat", "with", "東京", "and", "naïve", "dogs"]
    words += ["ran", "far"]
    lines = [" ".join(words[(i * 7) % 13 :] + words[: (i * 3) % 13]) for i in range(300)]
    (directory / "a.txt").write_text("\n".join(lines[:150]) + "\n")
    with gzip.open(directory / "b.txt.gz", "wb") as f:
        f.write("\n".join(lines[150:]).encode() + b"\nbad \xff bytes\n")


def config_for(workdir: Path, corpus: Path) -> object:
    return load_config(
        None,
        [
            f"workdir={workdir}",
            f'corpus.paths=["{corpus}"]',
            "vocab.min_count=2",
            "cooccur.window=4",
            "cooccur.num_shards=3",
            "bucket.num_buckets=3",
        ],
    )


def test_second_run_writes_the_same_bytes(spark, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_inputs(corpus)
    first = prepare(spark, config_for(tmp_path / "one", corpus))
    second = prepare(spark, config_for(tmp_path / "two", corpus))
    assert not any(m["skipped"] for m in second.values())
    for stage in first:
        assert first[stage]["fingerprint"] == second[stage]["fingerprint"]
        assert first[stage]["counts"] == second[stage]["counts"], stage

    one, two = table_files(tmp_path / "one"), table_files(tmp_path / "two")
    for table in TABLES:
        assert any(name.startswith(f"{table}/") for name in one), table
    assert file_rows(tmp_path / "one") == file_rows(tmp_path / "two")
    assert one == two


def test_tokenize_with_rejects_is_deterministic(spark, tmp_path: Path) -> None:
    corpus = tmp_path / "docs.jsonl"
    records = [json.dumps({"body": f"the cat {i % 5} sat"}) for i in range(50)]
    records[7], records[19] = "{not json", json.dumps({"title": "no body"})
    corpus.write_text("\n".join(records) + "\n")
    runs = []
    for name in ("one", "two"):
        config = load_config(
            None,
            [
                f"workdir={tmp_path / name}",
                f'corpus.paths=["{corpus}"]',
                "corpus.format=jsonl",
                "corpus.text_field=body",
            ],
        )
        STAGES["tokenize"].run(spark, config)
        runs.append(tmp_path / name)
    rejects = [table_files(table_dir(run, "tokens", "rejects")) for run in runs]
    assert rejects[0] and rejects[0] == rejects[1]
    assert table_files(runs[0]) == table_files(runs[1])


def test_one_gzip_file_is_spread_over_the_cores_in_line_order(spark, tmp_path: Path) -> None:
    """Spark reads a .gz in one task; the tokens table still comes in as many parts as the
    session has cores, and holds the lines in the plain file's order."""
    lines = [f"line {i} " + " ".join(f"w{(i * j) % 17}" for j in range(5)) for i in range(3000)]
    plain, packed = tmp_path / "plain.txt", tmp_path / "packed.txt.gz"
    plain.write_text("\n".join(lines) + "\n")
    with gzip.open(packed, "wt") as f:
        f.write("\n".join(lines) + "\n")
    tokens = {}
    for name, corpus in (("plain", plain), ("gz", packed)):
        STAGES["tokenize"].run(spark, config_for(tmp_path / name, corpus))
        directory = table_dir(tmp_path / name, "tokens")
        parts = sorted(directory.glob("part-*.parquet"))
        table = pq.read_table(parts).sort_by("seq_id")
        tokens[name] = (len(parts), table.column("tokens").to_pylist())
    cores = spark.sparkContext.defaultParallelism
    assert tokens["gz"][0] >= cores > 1
    assert tokens["gz"][1] == tokens["plain"][1]
    assert tokens["gz"][1][1234] == ["line", "1234", *(f"w{(1234 * j) % 17}" for j in range(5))]


def test_many_small_files_make_one_part_per_core_in_line_order(spark, tmp_path: Path) -> None:
    """Spark packs small files a few to a task; the tokens table has as many parts as the
    session has cores (later stages run that many tasks), each file's lines in their order
    (Spark orders the files themselves by size)."""
    corpus = tmp_path / "docs"
    corpus.mkdir()
    lines = [f"doc {i // 10} line {i}" for i in range(400)]
    for f in range(40):
        (corpus / f"doc-{f:03d}.txt").write_text("\n".join(lines[f * 10 : f * 10 + 10]) + "\n")
    spark.conf.set("spark.sql.files.maxPartitionBytes", "256")  # Spark reads a file a task
    try:
        STAGES["tokenize"].run(spark, config_for(tmp_path / "work", corpus))
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    parts = sorted(table_dir(tmp_path / "work", "tokens").glob("part-*.parquet"))
    table = pq.read_table(parts).sort_by("seq_id")
    assert len(parts) == spark.sparkContext.defaultParallelism
    read = [" ".join(t) for t in table.column("tokens").to_pylist()]
    assert sorted(read) == sorted(lines)
    for doc in range(40):
        mine = [line for line in read if line.startswith(f"doc {doc} ")]
        assert mine == lines[doc * 10 : doc * 10 + 10]
