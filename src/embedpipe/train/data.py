"""Each rank's share of the `sequences` table, streamed in bounded chunks.

Ranks split the table by global row ranges computed from Parquet metadata alone, so a
rank reads only its rows and memory is bounded by `chunk_rows`, not by the corpus. The
chunk list is deterministic, which makes (epoch, chunk, batch) a complete data cursor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow.parquet as pq

from embedpipe import schemas as S


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of one row group of one Parquet file."""

    file: str
    row_group: int
    start: int
    stop: int


def parquet_files(table_dir: str) -> list[str]:
    """The data files of a table directory (Spark's `_` and `.` files skipped), sorted."""
    fs, root = fsspec.core.url_to_fs(table_dir)
    files = [
        p
        for p in fs.find(root)
        if p.endswith(".parquet")
        and not any(part.startswith(("_", ".")) for part in p[len(root) :].split("/") if part)
    ]
    if not files:
        raise FileNotFoundError(f"{table_dir} holds no Parquet files")
    return [fs.unstrip_protocol(p) for p in sorted(files)]


def rank_chunks(table_dir: str, rank: int, world: int, chunk_rows: int = 16384) -> list[Chunk]:
    """The chunks of rows [rank * N / world, (rank + 1) * N / world) of the table."""
    groups: list[tuple[str, int, int]] = []
    for url in parquet_files(table_dir):
        with fsspec.open(url, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        groups += [(url, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    total = sum(n for _, _, n in groups)
    lo, hi = rank * total // world, (rank + 1) * total // world
    chunks, offset = [], 0
    for url, g, n in groups:
        start, stop = max(lo - offset, 0), min(hi - offset, n)
        for s in range(start, stop, chunk_rows):
            chunks.append(Chunk(url, g, s, min(s + chunk_rows, stop)))
        offset += n
    return chunks


def read_chunk(chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ids, int64 offsets) of a chunk's sequences."""
    with fsspec.open(chunk.file, "rb") as f:
        table = pq.ParquetFile(f).read_row_group(chunk.row_group, columns=[S.IDS])
    ids = table.column(S.IDS).combine_chunks().slice(chunk.start, chunk.stop - chunk.start)
    offsets = np.asarray(ids.offsets, dtype=np.int64)
    flat = ids.values.to_numpy()[offsets[0] : offsets[-1]].astype(np.int32, copy=False)
    return flat, offsets - offsets[0]


def count_rows(table_dir: str) -> int:
    total = 0
    for url in parquet_files(table_dir):
        with fsspec.open(url, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def iter_chunks(
    chunks: list[Chunk], first: int = 0
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    for i in range(first, len(chunks)):
        yield (i, *read_chunk(chunks[i]))
