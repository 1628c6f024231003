"""cooccur: sequences -> a sparse (row, col, weight) matrix, sharded by row.

Counting happens in numpy, per Spark partition: each Arrow batch's window pairs are
appended to a buffer, and the buffer is sorted, reduced and merged into the partition's
running sums whenever it fills (bounded memory; the merge of two sorted runs is linear).
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
FLUSH_PAIRS = 1 << 23  # raw pairs buffered before a sort-and-merge (~130 MB)
MAX_DISTINCT = 1 << 25  # distinct pairs a partition holds before it emits them
EMIT_ROWS = 1 << 20


def weight_scale(window: int) -> int:
    """L = lcm(1..window): every 1/d weight is the integer L / d in these units."""
    return math.lcm(*range(1, window + 1))


def pair_keys(ids: pa.ListArray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Unsummed (key, units) of every counted pair in a batch, both directions.

    key = row << 32 | col; units = L / distance.
    """
    offsets = np.asarray(ids.offsets)
    flat = np.asarray(ids.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]])
    seq = np.repeat(np.arange(len(ids)), np.diff(offsets))
    counted = flat >= len(S.SPECIAL_TOKENS)
    scale = weight_scale(window)
    keys, units = [], []
    for d in range(1, min(window, len(flat) - 1) + 1):
        ok = (seq[:-d] == seq[d:]) & counted[:-d] & counted[d:]
        left = flat[:-d][ok].astype(np.int64)
        right = flat[d:][ok].astype(np.int64)
        keys += [(left << 32) | right, (right << 32) | left]
        units.append(np.full(2 * len(left), scale // d, dtype=np.int64))
    if not keys:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(keys), np.concatenate(units)


def reduce_sorted(keys: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the units of equal keys in a sorted key array."""
    if len(keys) == 0:
        return keys, units
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(units, starts)


class PairCounter:
    """Sums pair units over many batches in bounded memory (sorted runs, merged linearly)."""

    def __init__(self, window: int, flush_pairs: int = FLUSH_PAIRS) -> None:
        self.window = window
        self.flush_pairs = flush_pairs
        self.keys = np.empty(0, np.int64)
        self.units = np.empty(0, np.int64)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_pairs = 0

    def add(self, ids: pa.ListArray) -> None:
        keys, units = pair_keys(ids, self.window)
        self.pending.append((keys, units))
        self.pending_pairs += len(keys)
        if self.pending_pairs >= self.flush_pairs:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        keys = np.concatenate([k for k, _ in self.pending])
        units = np.concatenate([u for _, u in self.pending])
        self.pending, self.pending_pairs = [], 0
        order = np.argsort(keys)
        keys, units = reduce_sorted(keys[order], units[order])
        # Two sorted runs: a stable (tim)sort merges them in linear time.
        merged = np.concatenate([self.keys, keys])
        order = np.argsort(merged, kind="stable")
        self.keys, self.units = reduce_sorted(
            merged[order], np.concatenate([self.units, units])[order]
        )

    def __len__(self) -> int:
        return len(self.keys)

    def drain(self) -> Iterator[pa.RecordBatch]:
        """Emit the sums as Arrow batches (sorted by row, col) and start afresh."""
        self.flush()
        keys, units = self.keys, self.units
        self.keys, self.units = np.empty(0, np.int64), np.empty(0, np.int64)
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


def count_pairs(ids: pa.ListArray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summed (row, col, weight) of one batch of id lists; weight = sum of 1/distance."""
    counter = PairCounter(window)
    counter.add(ids)
    table = pa.Table.from_batches(list(counter.drain()), schema=_PARTIAL_SCHEMA)
    return (
        table.column(S.ROW).to_numpy(),
        table.column(S.COL).to_numpy(),
        table.column(UNITS).to_numpy() / weight_scale(window),
    )


def cooccur(sequences: DataFrame, config: CooccurConfig) -> DataFrame:
    """COOCCUR_SCHEMA rows plus `shard`, one partition per shard, sorted by (row, col)."""
    window = config.window

    def count_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        counter = PairCounter(window)
        for batch in batches:
            counter.add(batch.column(S.IDS))
            if len(counter) >= MAX_DISTINCT:
                yield from counter.drain()
        yield from counter.drain()

    partial = sequences.select(S.IDS).mapInArrow(count_partition, S.spark_ddl(_PARTIAL_SCHEMA))
    shard = F.pmod(F.col(S.ROW), F.lit(config.num_shards)).cast("int").alias(S.SHARD)
    # Hash-partitioning by shard also clusters (shard, row, col): one shuffle, no second one.
    summed = (
        partial.select(shard, S.ROW, S.COL, UNITS)
        .repartition(config.num_shards, S.SHARD)
        .groupBy(S.SHARD, S.ROW, S.COL)
        .agg(F.sum(UNITS).alias(UNITS))
    )
    weight = F.col(UNITS).cast("double") / F.lit(float(weight_scale(window)))
    if config.min_weight > 0:
        summed = summed.where(weight >= config.min_weight)
    return summed.select(
        S.ROW, S.COL, weight.cast("float").alias(S.WEIGHT), S.SHARD
    ).sortWithinPartitions(S.SHARD, S.ROW, S.COL)
