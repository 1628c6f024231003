"""encode: token strings -> int32 ids by an Arrow hash lookup against the broadcast vocabulary.

The sequences are written by the Python side of each task (see `output`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession

from embedpipe import schemas as S
from embedpipe.config import EncodeConfig
from embedpipe.corpus.spark.parts import PartWriter, finish_table, map_parts, part_name


def encode_arrow(tokens: pa.ListArray, vocab: pa.Array, oov: str) -> pa.ListArray:
    """Ids of every token list; unknown tokens become [UNK] (`oov="unk"`) or are dropped."""
    flat = pc.list_flatten(tokens)
    ids = pc.index_in(flat, value_set=vocab)
    if oov == "unk":
        offsets = np.asarray(tokens.offsets) - tokens.offsets[0].as_py()
        ids = pc.fill_null(ids, S.UNK_ID)
    else:
        known = pc.is_valid(ids)
        parents = pc.list_parent_indices(tokens).filter(known).to_numpy()
        ids = ids.filter(known)
        offsets = np.zeros(len(tokens) + 1, dtype=np.int32)
        np.cumsum(np.bincount(parents, minlength=len(tokens)), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), ids.cast(pa.int32()))


_STATS = ("sequences", "tokens", "unk_tokens", "max_length")
_STATS_SCHEMA = pa.schema([pa.field(name, pa.int64()) for name in _STATS])


def write_sequences(
    spark: SparkSession,
    tokens_url: str,
    vocab_tokens: Sequence[str],
    config: EncodeConfig,
    out: str,
) -> dict[str, int]:
    """The tokens table at `tokens_url` -> the sequences table at `out` (SEQUENCES_SCHEMA),
    and its counts.

    One task per part file of the tokens table (`parts.map_parts`): it encodes the file's
    rows in Arrow batches and writes `part-<i>.parquet` in the same order; sequences left
    empty are not written. Unknown tokens become [UNK] or are dropped (`config.oov`).
    """
    broadcast = spark.sparkContext.broadcast(list(vocab_tokens))
    oov, out = config.oov, out.rstrip("/")

    def encode_part(batches: Iterator[pa.RecordBatch], part: int) -> Iterator[pa.RecordBatch]:
        vocab = pa.array(broadcast.value, pa.string())
        writer = PartWriter(f"{out}/{part_name(part)}", S.SEQUENCES_SCHEMA)
        stats = dict.fromkeys(_STATS, 0)
        try:
            for batch in batches:
                ids = encode_arrow(batch.column(S.TOKENS), vocab, oov)
                lengths = pc.list_value_length(ids).cast(pa.int32())
                kept = pa.RecordBatch.from_arrays([ids, lengths], schema=S.SEQUENCES_SCHEMA)
                kept = kept.filter(pc.greater(lengths, 0))
                writer.write(kept)
                n = kept.column(S.LENGTH).to_numpy()
                flat = pc.list_flatten(kept.column(S.IDS)).to_numpy()
                stats["sequences"] += len(n)
                stats["tokens"] += int(n.sum())
                stats["unk_tokens"] += int(np.count_nonzero(flat == S.UNK_ID))
                stats["max_length"] = max(stats["max_length"], int(n.max(initial=0)))
            writer.close()
        except BaseException:
            writer.abort()
            raise
        yield pa.RecordBatch.from_pylist([stats], schema=_STATS_SCHEMA)

    written = map_parts(spark, tokens_url, [S.TOKENS], encode_part, _STATS_SCHEMA).collect()
    finish_table(out, S.SEQUENCES_SCHEMA)
    totals = {
        "sequences": sum(r["sequences"] for r in written),
        "tokens": sum(r["tokens"] for r in written),
        "unk_tokens": sum(r["unk_tokens"] for r in written),
        "max_length": max((r["max_length"] for r in written), default=0),
    }
    if totals["sequences"] == 0:
        totals["max_length"] = None  # as Spark's max over no rows
    return totals
