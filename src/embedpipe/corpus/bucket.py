"""bucket: sequences -> sequences with a length bucket, and what padding each bucket costs.

The buckets are written by the Python side of each task (see `parts`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from embedpipe import schemas as S
from embedpipe.corpus.spark.parts import PartWriter, finish_table, map_parts, part_name

QUANTILE_ERROR = 0.001


def derive_boundaries(sequences: DataFrame, num_buckets: int) -> list[int]:
    """Inclusive upper bounds at approximate length quantiles (distributed, bounded memory)."""
    if num_buckets <= 1:
        return []
    probs = [i / num_buckets for i in range(1, num_buckets)]
    quantiles = sequences.approxQuantile(S.LENGTH, probs, QUANTILE_ERROR)
    return sorted({math.ceil(q) for q in quantiles})


def bucket_of(lengths: np.ndarray, boundaries: Sequence[int]) -> np.ndarray:
    """Bucket k holds lengths in (boundaries[k-1], boundaries[k]]: the boundaries below."""
    return np.searchsorted(np.asarray(boundaries, np.int64), lengths, side="left").astype(np.int32)


_STATS = ("sequences", "tokens", "min_length", "max_length")
_STATS_SCHEMA = pa.schema(
    [pa.field(S.BUCKET, pa.int32())] + [pa.field(name, pa.int64()) for name in _STATS]
)


def write_buckets(
    spark: SparkSession, sequences_url: str, boundaries: Sequence[int], out: str
) -> list[dict]:
    """SEQUENCES rows -> `out/bucket=k/part-<partition>.parquet` (hive layout, as Spark's
    partitionBy writes it: the bucket is in the path, not in the file), and per bucket:
    sequences, tokens, shortest, longest, and the share of padding when padded to the longest.

    One task per part file of the sequences table (`parts.map_parts`); it writes its rows
    of every bucket it holds.
    """
    bounds, out = [int(b) for b in boundaries], out.rstrip("/")

    def bucket_part(batches: Iterator[pa.RecordBatch], part: int) -> Iterator[pa.RecordBatch]:
        name = part_name(part)
        writers: dict[int, PartWriter] = {}
        stats: dict[int, dict[str, int]] = {}
        try:
            for batch in batches:
                lengths = batch.column(S.LENGTH).to_numpy()
                buckets = bucket_of(lengths, bounds)
                for k in np.unique(buckets).tolist():
                    mask = buckets == k
                    if k not in writers:
                        url = f"{out}/{S.BUCKET}={k}/{name}"
                        writers[k] = PartWriter(url, S.SEQUENCES_SCHEMA)
                        stats[k] = {
                            "sequences": 0,
                            "tokens": 0,
                            "min_length": 2**62,
                            "max_length": 0,
                        }
                    writers[k].write(batch.filter(pa.array(mask)))
                    mine, st = lengths[mask], stats[k]
                    st["sequences"] += len(mine)
                    st["tokens"] += int(mine.sum())
                    st["min_length"] = min(st["min_length"], int(mine.min()))
                    st["max_length"] = max(st["max_length"], int(mine.max()))
            for writer in writers.values():
                writer.close()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        rows = [{S.BUCKET: k, **stats[k]} for k in sorted(stats)]
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=_STATS_SCHEMA)

    written = map_parts(spark, sequences_url, [S.IDS, S.LENGTH], bucket_part, _STATS_SCHEMA)
    merged: dict[int, dict[str, int]] = {}
    for r in written.collect():
        m = merged.setdefault(
            r[S.BUCKET], {"sequences": 0, "tokens": 0, "min_length": 2**62, "max_length": 0}
        )
        m["sequences"] += r["sequences"]
        m["tokens"] += r["tokens"]
        m["min_length"] = min(m["min_length"], r["min_length"])
        m["max_length"] = max(m["max_length"], r["max_length"])
    finish_table(out, S.SEQUENCES_SCHEMA)
    return [padding_stats(k, merged[k]) for k in sorted(merged)]


def padding_stats(bucket: int, counts: dict[str, int]) -> dict:
    padded = counts["sequences"] * counts["max_length"]
    return {
        "bucket": bucket,
        "sequences": counts["sequences"],
        "tokens": counts["tokens"],
        "min_length": counts["min_length"],
        "max_length": counts["max_length"],
        "padding_waste": round(1 - counts["tokens"] / padded, 6) if padded else 0.0,
    }
