"""Each rank's share of the `sequences` table, streamed in bounded chunks.

Ranks split the table by global row ranges computed from Parquet metadata alone, so a
rank reads only its rows and memory is bounded by `chunk_rows`, not by the corpus. The
chunk list is deterministic, which makes (epoch, chunk, batch) a complete data cursor.
`Prefetcher` runs a deterministic producer (reading, pair generation, negative sampling)
on a background thread so it overlaps the training step and collective waits.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import fsspec
import numpy as np
import pyarrow.parquet as pq

from embedpipe import schemas as S


class Batch(NamedTuple):
    """One step's examples, and where the data cursor stands (what the loop and `agree` read).

    `data`: a `windows.SpanBatch` (sgns, cbow trained in place), a `windows.WindowBatch`
    (sgns, cbow across ranks or on GPUs) or (rows, cols, x) arrays of `cooccur` (glove).
    """

    data: tuple[Any, ...]
    pairs: int  # examples: (context, centre) pairs, centre words with contexts, entries
    words: float  # corpus words (or entries) this batch stands for
    remaining: int  # batches left in its chunk, this one included
    cursor: tuple[int, int]  # (chunk, batch) after this one

    def tensors(self) -> tuple[Any, ...]:
        return self.data


def chunk_seed(seed: int, epoch: int, rank: int, chunk: int) -> list[int]:
    """The seed of everything random about one chunk of one rank and epoch."""
    return [seed, epoch, rank, chunk]


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
    return split_chunks(parquet_files(table_dir), rank, world, chunk_rows)


def cooccur_chunks(table_dir: str, rank: int, world: int, chunk_rows: int = 1 << 13) -> list[Chunk]:
    """A rank's chunks of the `cooccur` table (partitioned `shard=k/`).

    With at least as many shards as ranks, rank r takes the whole shards k with
    k % world == r (shards hold rows with row % S == k: balanced in expectation); with
    fewer shards, the ranks split the table's rows as `rank_chunks` does.
    """
    files = parquet_files(table_dir)
    shards = [int(m.group(1)) if (m := _SHARD.search(f)) else 0 for f in files]
    if len(set(shards)) >= world:
        mine = [f for f, k in zip(files, shards, strict=True) if k % world == rank]
        return split_chunks(mine, 0, 1, chunk_rows) if mine else []
    return split_chunks(files, rank, world, chunk_rows)


def split_chunks(files: list[str], rank: int, world: int, chunk_rows: int) -> list[Chunk]:
    """The chunks of rows [rank * N / world, (rank + 1) * N / world) of `files`, in order."""
    groups: list[tuple[str, int, int]] = []
    for url in files:
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


class ChunkReader:
    """Reads chunks, keeping the last row group so consecutive chunks of one group read it once."""

    def __init__(self) -> None:
        self._key: tuple[str, int] | None = None
        self._ids: Any = None

    def __call__(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
        """(flat int32 ids, int64 offsets) of a chunk's sequences."""
        key = (chunk.file, chunk.row_group)
        if key != self._key:
            with fsspec.open(chunk.file, "rb") as f:
                table = pq.ParquetFile(f).read_row_group(chunk.row_group, columns=[S.IDS])
            self._key, self._ids = key, table.column(S.IDS).combine_chunks()
        ids = self._ids.slice(chunk.start, chunk.stop - chunk.start)
        offsets = np.asarray(ids.offsets, dtype=np.int64)
        flat = ids.values.to_numpy()[offsets[0] : offsets[-1]].astype(np.int32, copy=False)
        return flat, offsets - offsets[0]


class CooccurReader:
    """Reads chunks of the `cooccur` table: (row int64, col int64, weight float32).

    Keeps every file it has opened open (a table has a few files per shard) and the last
    row group read, so chunks visited in a random order cost one row-group read each.
    """

    def __init__(self) -> None:
        self._files: dict[str, pq.ParquetFile] = {}
        self._handles: list[Any] = []
        self._key: tuple[str, int] | None = None
        self._table: Any = None

    def __call__(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = (chunk.file, chunk.row_group)
        if key != self._key:
            if chunk.file not in self._files:
                handle = fsspec.open(chunk.file, "rb").open()
                self._handles.append(handle)
                self._files[chunk.file] = pq.ParquetFile(handle)
            self._table = self._files[chunk.file].read_row_group(
                chunk.row_group, columns=[S.ROW, S.COL, S.WEIGHT]
            )
            self._key = key
        part = self._table.slice(chunk.start, chunk.stop - chunk.start)
        return (
            part.column(S.ROW).to_numpy().astype(np.int64),
            part.column(S.COL).to_numpy().astype(np.int64),
            part.column(S.WEIGHT).to_numpy().astype(np.float32, copy=False),
        )

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._files.clear()
        self._handles.clear()


def read_chunk(chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ids, int64 offsets) of a chunk's sequences."""
    return ChunkReader()(chunk)


def count_rows(table_dir: str) -> int:
    total = 0
    for url in parquet_files(table_dir):
        with fsspec.open(url, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def iter_chunks(
    chunks: list[Chunk], first: int = 0
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    reader = ChunkReader()
    for i in range(first, len(chunks)):
        yield (i, *reader(chunks[i]))


_SHARD = re.compile(r"shard=(\d+)")
T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Generic[T]):
    """Iterate `items` on a background thread, up to `depth` items ahead.

    The order and content of items are the producer's alone, so prefetching never changes
    results; `depth=0` runs the producer inline (no thread). `peek()` returns the next item
    without consuming it (None at the end); errors of the producer re-raise here. Always
    `close()` (or use as a context manager): it stops the thread when a consumer ends early.
    """

    def __init__(self, items: Iterator[T], depth: int = 8) -> None:
        self._items = items
        self._head: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
            self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(error))

    def _fetch(self) -> Any:
        if self._thread is None:
            return next(self._items, _DONE)
        return self._queue.get()

    def peek(self) -> T | None:
        if self._head is None:
            self._head = self._fetch()
        if isinstance(self._head, _Failure):
            raise self._head.error
        return None if self._head is _DONE else self._head

    def __iter__(self) -> Prefetcher[T]:
        return self

    def __next__(self) -> T:
        item = self.peek()
        if item is None:
            raise StopIteration
        self._head = None
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
