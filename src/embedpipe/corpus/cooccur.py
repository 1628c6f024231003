"""cooccur: sequences -> a sparse (row, col, weight) matrix, sharded by row.

Counting happens in numpy, per Spark partition (`PairCounter`): pairs of frequent words
go into a dense matrix, the others into sorted runs merged like a log-structured tree.
Only the partition's distinct pairs cross into the JVM, where one shuffle by shard merges
them. Special-token ids (including [UNK]) take up their position in the window but are not
counted, so distances are those of the text.

Weights are summed exactly, as integers: a pair at distance d adds L / d, where L is the
least common multiple of 1..window, and the sum is divided by L once at the end. The result
is then independent of partitioning and summation order, so a cluster run writes the same
bytes as a local one.

Shard k holds the rows with row % S == k. (Contiguous row ranges would be badly unbalanced:
ids are sorted by frequency, so the first range would hold most of the entries.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from embedpipe import schemas as S
from embedpipe.config import CooccurConfig

UNITS = "units"  # the integer weight column of partial counts
_PARTIAL_SCHEMA = pa.schema(
    [pa.field(S.ROW, pa.int32()), pa.field(S.COL, pa.int32()), pa.field(UNITS, pa.int64())]
)
KEY = "key"
_KEYED_SCHEMA = pa.schema(
    [pa.field(S.SHARD, pa.int32()), pa.field(KEY, pa.int64()), pa.field(UNITS, pa.int64())]
)
FLUSH_PAIRS = 1 << 23  # raw pairs buffered before a sort-and-merge (~130 MB)
MAX_DISTINCT = 1 << 25  # distinct pairs a partition holds before it emits them
EMIT_ROWS = 1 << 20
DENSE_IDS = 4096  # pairs of the 4096 most frequent ids are summed in a dense 128 MiB matrix


def weight_scale(window: int) -> int:
    """L = lcm(1..window): every 1/d weight is the integer L / d in these units."""
    return math.lcm(*range(1, window + 1))


def window_pairs(ids: pa.ListArray, window: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(left ids, right ids, units) of the counted pairs at each distance d = 1..window.

    One direction only (left before right); units = L / d.
    """
    offsets = np.asarray(ids.offsets)
    flat = np.asarray(ids.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]])
    flat = flat.astype(np.int64)
    seq = np.repeat(np.arange(len(ids)), np.diff(offsets))
    counted = flat >= len(S.SPECIAL_TOKENS)
    scale = weight_scale(window)
    for d in range(1, min(window, len(flat) - 1) + 1):
        ok = (seq[:-d] == seq[d:]) & counted[:-d] & counted[d:]
        yield flat[:-d][ok], flat[d:][ok], scale // d


def reduce_sorted(keys: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the units of equal keys in a sorted key array."""
    if len(keys) == 0:
        return keys, units
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(units, starts)


def merge_runs(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two sorted, reduced runs (a stable timsort of two runs is a linear merge)."""
    keys = np.concatenate([a[0], b[0]])
    order = np.argsort(keys, kind="stable")
    return reduce_sorted(keys[order], np.concatenate([a[1], b[1]])[order])


class PairCounter:
    """Sums pair units over many batches in bounded memory.

    Pairs of two frequent words (ids < `dense_ids`; ids are sorted by frequency, so these
    are most pairs) are added into a dense matrix by `np.bincount`; the rest are buffered,
    sorted and reduced into runs that are merged like a log-structured tree (each merge of
    runs of similar size), so every pair is sorted O(log n) times, not once per flush.
    """

    def __init__(
        self, window: int, flush_pairs: int = FLUSH_PAIRS, dense_ids: int = DENSE_IDS
    ) -> None:
        self.window = window
        self.flush_pairs = flush_pairs
        self.dense_ids = dense_ids
        self.dense: np.ndarray | None = None  # float64 sums of integers: exact below 2**53
        self.dense_pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.sparse_pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_pairs = 0
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, ids: pa.ListArray) -> None:
        d_ids = self.dense_ids
        for left, right, units in window_pairs(ids, self.window):
            dense = (left < d_ids) & (right < d_ids)
            dl, dr = left[dense], right[dense]
            cells = np.concatenate([dl * d_ids + dr, dr * d_ids + dl])
            self.dense_pending.append((cells, np.full(len(cells), units, np.float64)))
            sl, sr = left[~dense], right[~dense]
            keys = np.concatenate([(sl << 32) | sr, (sr << 32) | sl])
            self.sparse_pending.append((keys, np.full(len(keys), units, np.int64)))
            self.pending_pairs += len(cells) + len(keys)
        if self.pending_pairs >= self.flush_pairs:
            self.flush()

    def flush(self) -> None:
        if self.dense_pending:
            cells = np.concatenate([c for c, _ in self.dense_pending])
            weights = np.concatenate([w for _, w in self.dense_pending])
            if len(cells):
                size = self.dense_ids * self.dense_ids
                summed = np.bincount(cells, weights=weights, minlength=size)
                self.dense = summed if self.dense is None else self.dense + summed
        if self.sparse_pending:
            keys = np.concatenate([k for k, _ in self.sparse_pending])
            units = np.concatenate([u for _, u in self.sparse_pending])
            if len(keys):
                order = np.argsort(keys)
                self.runs.append(reduce_sorted(keys[order], units[order]))
                while len(self.runs) > 1 and 2 * len(self.runs[-1][0]) >= len(self.runs[-2][0]):
                    last = self.runs.pop()
                    self.runs.append(merge_runs(self.runs.pop(), last))
        self.dense_pending, self.sparse_pending, self.pending_pairs = [], [], 0

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self.runs)

    def drain(self) -> Iterator[pa.RecordBatch]:
        """Emit the sums as Arrow batches (sorted by row, col) and start afresh."""
        self.flush()
        runs = self.runs
        if self.dense is not None:
            cells = np.flatnonzero(self.dense)
            rows, cols = np.divmod(cells, self.dense_ids)
            runs = [*runs, ((rows << 32) | cols, self.dense[cells].astype(np.int64))]
        self.runs, self.dense = [], None
        keys, units = np.empty(0, np.int64), np.empty(0, np.int64)
        for run in runs:
            keys, units = merge_runs((keys, units), run)
        for a in range(0, len(keys), EMIT_ROWS):
            k = keys[a : a + EMIT_ROWS]
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array((k >> 32).astype(np.int32)),
                    pa.array((k & 0xFFFFFFFF).astype(np.int32)),
                    pa.array(units[a : a + EMIT_ROWS]),
                ],
                schema=_PARTIAL_SCHEMA,
            )


def count_pairs(
    ids: pa.ListArray, window: int, dense_ids: int = DENSE_IDS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summed (row, col, weight) of one batch of id lists; weight = sum of 1/distance."""
    counter = PairCounter(window, dense_ids=dense_ids)
    counter.add(ids)
    table = pa.Table.from_batches(list(counter.drain()), schema=_PARTIAL_SCHEMA)
    return (
        table.column(S.ROW).to_numpy(),
        table.column(S.COL).to_numpy(),
        table.column(UNITS).to_numpy() / weight_scale(window),
    )


def cooccur(sequences: DataFrame, config: CooccurConfig) -> DataFrame:
    """COOCCUR_SCHEMA rows plus `shard`, one partition per shard, sorted by (row, col).

    Partial sums cross into the JVM keyed by one long (row << 32 | col) with their shard,
    which makes Spark's hash aggregation and sort about twice as fast as on (row, col).
    """
    window, shards = config.window, config.num_shards

    def count_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        counter = PairCounter(window)
        for batch in batches:
            counter.add(batch.column(S.IDS))
            if len(counter) >= MAX_DISTINCT:
                yield from keyed(counter.drain(), shards)
        yield from keyed(counter.drain(), shards)

    partial = sequences.select(S.IDS).mapInArrow(count_partition, S.spark_ddl(_KEYED_SCHEMA))
    # Hash-partitioning by shard also clusters (shard, key): one shuffle, no second one.
    summed = (
        partial.repartition(shards, S.SHARD)
        .groupBy(S.SHARD, KEY)
        .agg(F.sum(UNITS).alias(UNITS))
        .sortWithinPartitions(S.SHARD, KEY)
    )
    weight = F.col(UNITS).cast("double") / F.lit(float(weight_scale(window)))
    if config.min_weight > 0:
        summed = summed.where(weight >= config.min_weight)
    return summed.select(
        F.shiftright(KEY, 32).cast("int").alias(S.ROW),
        F.col(KEY).bitwiseAND(F.lit(0xFFFFFFFF)).cast("int").alias(S.COL),
        weight.cast("float").alias(S.WEIGHT),
        S.SHARD,
    )


def keyed(batches: Iterator[pa.RecordBatch], shards: int) -> Iterator[pa.RecordBatch]:
    """(row, col, units) batches as (shard, key, units)."""
    for batch in batches:
        rows = batch.column(S.ROW).to_numpy().astype(np.int64)
        cols = batch.column(S.COL).to_numpy().astype(np.int64)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array((rows % shards).astype(np.int32)),
                pa.array((rows << 32) | cols),
                batch.column(UNITS),
            ],
            schema=_KEYED_SCHEMA,
        )
