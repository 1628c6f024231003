"""Ranks' shares of the sequences table, chunk reading and the prefetching thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedpipe import schemas as S
from embedpipe.train.data import (
    ChunkReader,
    Prefetcher,
    count_rows,
    parquet_files,
    rank_chunks,
    read_chunk,
)


def write_numbered(table_dir: Path, files: list[list[int]]) -> int:
    """Files of row groups of the given sizes; row r holds the sequence [r, r]."""
    table_dir.mkdir(parents=True)
    row = 0
    for f, groups in enumerate(files):
        with pq.ParquetWriter(table_dir / f"part-{f:05d}.parquet", S.SEQUENCES_SCHEMA) as w:
            for size in groups:
                ids = [[r, r] for r in range(row, row + size)]
                w.write_table(
                    pa.table(
                        {S.IDS: pa.array(ids, pa.list_(pa.int32())), S.LENGTH: [2] * size},
                        schema=S.SEQUENCES_SCHEMA,
                    )
                )
                row += size
    (table_dir / "_SUCCESS").write_text("")
    (table_dir / "._SUCCESS.crc").write_text("")
    return row


@pytest.mark.parametrize(
    ("layout", "chunk_rows"),
    [([[10]], 16384), ([[10]], 3), ([[7, 7, 3], [10]], 4), ([[2]], 16384)],
    ids=["one-group", "one-group-small-chunks", "files-and-groups", "fewer-rows-than-ranks"],
)
@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_chunks_partition_the_table(
    tmp_path: Path, layout: list[list[int]], chunk_rows: int, world: int
) -> None:
    total = write_numbered(tmp_path / "seq", layout)
    assert count_rows(str(tmp_path / "seq")) == total
    seen = []
    for rank in range(world):
        chunks = rank_chunks(str(tmp_path / "seq"), rank, world, chunk_rows=chunk_rows)
        rows = [int(r) for c in chunks for r in read_chunk(c)[0][::2]]
        assert len(rows) == (rank + 1) * total // world - rank * total // world
        assert all(c.stop - c.start <= chunk_rows for c in chunks)
        seen += rows
    assert seen == list(range(total))  # every row once, ranks in order


def test_read_chunk_offsets_and_reader_cache(tmp_path: Path) -> None:
    write_numbered(tmp_path / "seq", [[5, 6]])
    chunks = rank_chunks(str(tmp_path / "seq"), 0, 1, chunk_rows=2)
    reader = ChunkReader()
    for chunk in chunks:
        flat, offsets = reader(chunk)
        assert flat.dtype == np.int32
        assert offsets[0] == 0 and offsets[-1] == len(flat)
        expected = np.repeat(np.arange(chunk.start, chunk.stop), 2)
        if chunk.row_group == 1:
            expected += 5
        np.testing.assert_array_equal(flat, expected)
        np.testing.assert_array_equal(flat, read_chunk(chunk)[0])


def test_parquet_files_skips_spark_side_files(tmp_path: Path) -> None:
    write_numbered(tmp_path / "seq", [[1], [1]])
    assert [Path(f).name for f in parquet_files(str(tmp_path / "seq"))] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        parquet_files(str(tmp_path / "empty"))


@pytest.mark.parametrize("depth", [0, 2])
def test_prefetcher_keeps_order_and_peeks(depth: int) -> None:
    with Prefetcher(iter(range(10)), depth=depth) as stream:
        assert stream.peek() == 0
        assert stream.peek() == 0
        assert list(stream) == list(range(10))
        assert stream.peek() is None


@pytest.mark.parametrize("depth", [0, 2])
def test_prefetcher_reraises_producer_errors(depth: int) -> None:
    def items():  # noqa: ANN202
        yield 1
        raise ValueError("broken chunk")

    with Prefetcher(items(), depth=depth) as stream:
        assert next(stream) == 1
        with pytest.raises(ValueError, match="broken chunk"):
            next(stream)


def test_prefetcher_close_stops_an_endless_producer() -> None:
    def endless():  # noqa: ANN202
        i = 0
        while True:
            yield i
            i += 1

    stream = Prefetcher(endless(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())
