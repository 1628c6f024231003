"""bucket: sequences -> sequences with a length bucket, and what padding each bucket costs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from embedpipe import schemas as S

QUANTILE_ERROR = 0.001


def derive_boundaries(sequences: DataFrame, num_buckets: int) -> list[int]:
    """Inclusive upper bounds at approximate length quantiles (distributed, bounded memory)."""
    if num_buckets <= 1:
        return []
    probs = [i / num_buckets for i in range(1, num_buckets)]
    quantiles = sequences.approxQuantile(S.LENGTH, probs, QUANTILE_ERROR)
    return sorted({math.ceil(q) for q in quantiles})


def assign_buckets(sequences: DataFrame, boundaries: Sequence[int]) -> DataFrame:
    """BUCKETS_SCHEMA rows: bucket k holds lengths in (boundaries[k-1], boundaries[k]]."""
    bounds = (
        F.array(*[F.lit(int(b)) for b in boundaries])
        if boundaries
        else F.array().cast("array<int>")
    )
    bucket = F.size(F.filter(bounds, lambda b: b < F.col(S.LENGTH))).cast("int")
    return sequences.select(S.IDS, S.LENGTH, bucket.alias(S.BUCKET))


def bucket_stats(buckets: DataFrame) -> list[dict]:
    """Per bucket: sequences, tokens, longest, and the share of padding when padded to the longest."""
    rows = (
        buckets.groupBy(S.BUCKET)
        .agg(
            F.count(F.lit(1)).alias("sequences"),
            F.sum(S.LENGTH).alias("tokens"),
            F.max(S.LENGTH).alias("max_length"),
            F.min(S.LENGTH).alias("min_length"),
        )
        .orderBy(S.BUCKET)
        .collect()
    )
    stats = []
    for r in rows:
        padded = r["sequences"] * r["max_length"]
        stats.append(
            {
                "bucket": r[S.BUCKET],
                "sequences": r["sequences"],
                "tokens": r["tokens"],
                "min_length": r["min_length"],
                "max_length": r["max_length"],
                "padding_waste": round(1 - r["tokens"] / padded, 6) if padded else 0.0,
            }
        )
    return stats
