"""encode: token strings -> int32 ids by an Arrow hash lookup against the broadcast vocabulary.

The sequences are written by the Python side of each task (see `output`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame

from embedpipe import schemas as S
from embedpipe.config import EncodeConfig
from embedpipe.corpus.output import PartWriter, finish_table, part_name, task_partition


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


LOOKUP_ROWS = 1 << 16  # rows per lookup: each call hashes the whole vocabulary again
_STATS = ("sequences", "tokens", "unk_tokens", "max_length")


def rebatched(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of at least `rows` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
            pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


_STATS_SCHEMA = pa.schema([pa.field(name, pa.int64()) for name in _STATS])


def write_sequences(
    tokens: DataFrame, vocab_tokens: Sequence[str], config: EncodeConfig, out: str
) -> dict[str, int]:
    """TOKENS rows -> the sequences table at `out` (SEQUENCES_SCHEMA), and its counts.

    Each task encodes its partition in Arrow batches and writes `part-<partition>.parquet`
    in input order (see `output`); sequences left empty are not written.
    """
    broadcast = tokens.sparkSession.sparkContext.broadcast(list(vocab_tokens))
    oov, out = config.oov, out.rstrip("/")

    def encode_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        vocab = pa.array(broadcast.value, pa.string())
        writer = PartWriter(f"{out}/{part_name(task_partition())}", S.SEQUENCES_SCHEMA)
        stats = dict.fromkeys(_STATS, 0)
        try:
            for batch in rebatched(batches, LOOKUP_ROWS):
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

    written = (
        tokens.select(S.TOKENS).mapInArrow(encode_partition, S.spark_ddl(_STATS_SCHEMA)).collect()
    )
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
