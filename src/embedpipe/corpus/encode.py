"""encode: token strings -> int32 ids by an Arrow hash lookup against the broadcast vocabulary."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame

from embedpipe import schemas as S
from embedpipe.config import EncodeConfig


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


def encode(tokens: DataFrame, vocab_tokens: Sequence[str], config: EncodeConfig) -> DataFrame:
    """TOKENS rows -> SEQUENCES_SCHEMA rows; sequences left empty are not written."""
    broadcast = tokens.sparkSession.sparkContext.broadcast(list(vocab_tokens))
    oov = config.oov

    def encode_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        vocab = pa.array(broadcast.value, pa.string())
        for batch in batches:
            ids = encode_arrow(batch.column(S.TOKENS), vocab, oov)
            lengths = pc.list_value_length(ids).cast(pa.int32())
            out = pa.RecordBatch.from_arrays([ids, lengths], schema=S.SEQUENCES_SCHEMA)
            yield out.filter(pc.greater(lengths, 0))

    return tokens.select(S.TOKENS).mapInArrow(encode_batches, S.spark_ddl(S.SEQUENCES_SCHEMA))
