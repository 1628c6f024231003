"""cooccur: sequences -> a sparse (row, col, weight) matrix, sharded by row.

Each Arrow batch is counted in numpy (window pairs, weight 1/distance, both directions,
pre-aggregated per batch); Spark's shuffle sums the partial counts. Special-token ids
(including [UNK]) take up their position in the window but are not counted, so
distances are those of the text.

Shard k holds the rows with row % S == k. (Contiguous row ranges would be badly unbalanced:
ids are sorted by frequency, so the first range would hold most of the entries.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from embedpipe import schemas as S
from embedpipe.config import CooccurConfig

_PARTIAL_SCHEMA = pa.schema(
    [pa.field(S.ROW, pa.int32()), pa.field(S.COL, pa.int32()), pa.field(S.WEIGHT, pa.float64())]
)


def count_pairs(ids: pa.ListArray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summed (row, col, weight) of one batch of id lists; weights are float64."""
    offsets = np.asarray(ids.offsets)
    flat = np.asarray(ids.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]])
    seq = np.repeat(np.arange(len(ids)), np.diff(offsets))
    counted = flat >= len(S.SPECIAL_TOKENS)
    keys, weights = [], []
    for d in range(1, window + 1):
        if d >= len(flat):
            break
        ok = (seq[:-d] == seq[d:]) & counted[:-d] & counted[d:]
        left = flat[:-d][ok].astype(np.int64)
        right = flat[d:][ok].astype(np.int64)
        keys += [(left << 32) | right, (right << 32) | left]
        weights += [np.full(2 * len(left), 1.0 / d)]
    if not keys:
        empty = np.empty(0, np.int32)
        return empty, empty, np.empty(0, np.float64)
    key = np.concatenate(keys)
    weight = np.concatenate(weights)
    unique, inverse = np.unique(key, return_inverse=True)
    summed = np.bincount(inverse, weights=weight, minlength=len(unique))
    return (unique >> 32).astype(np.int32), (unique & 0xFFFFFFFF).astype(np.int32), summed


def cooccur(sequences: DataFrame, config: CooccurConfig) -> DataFrame:
    """COOCCUR_SCHEMA rows plus `shard`, repartitioned by shard and sorted by (row, col)."""
    window = config.window

    def count_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            row, col, weight = count_pairs(batch.column(S.IDS), window)
            yield pa.RecordBatch.from_arrays(
                [pa.array(row), pa.array(col), pa.array(weight)], schema=_PARTIAL_SCHEMA
            )

    partial = sequences.select(S.IDS).mapInArrow(count_batches, S.spark_ddl(_PARTIAL_SCHEMA))
    summed = partial.groupBy(S.ROW, S.COL).agg(F.sum(S.WEIGHT).alias(S.WEIGHT))
    if config.min_weight > 0:
        summed = summed.where(F.col(S.WEIGHT) >= config.min_weight)
    shard = F.pmod(F.col(S.ROW), F.lit(config.num_shards)).cast("int")
    return (
        summed.select(
            S.ROW, S.COL, F.col(S.WEIGHT).cast("float").alias(S.WEIGHT), shard.alias(S.SHARD)
        )
        .repartition(config.num_shards, S.SHARD)
        .sortWithinPartitions(S.SHARD, S.ROW, S.COL)
    )
