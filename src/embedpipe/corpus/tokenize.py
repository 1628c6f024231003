"""tokenize: lines -> one row per sequence with its token strings (Arrow batches, no UDF)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from embedpipe import schemas as S
from embedpipe.config import TokenizeConfig
from embedpipe.text import tokenize_arrow
from embedpipe.text.sentencepiece import encode_pieces_arrow, load_processor
from embedpipe.text.tokenizer import split_long_line

_BATCH_SCHEMA = pa.schema([f for f in S.TOKENS_SCHEMA if f.name != S.SEQ_ID])


def split_long_lines(batch: pa.RecordBatch, limit: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(text, repaired, split) with every line over `limit` characters cut into pieces.

    Long lines are rare, so only they go through Python; the rest stay Arrow arrays.
    """
    text, repaired = batch.column(S.TEXT), batch.column(S.REPAIRED)
    long = pc.greater(pc.utf8_length(pc.fill_null(text, "")), limit)
    if not pc.any(long).as_py():
        return text, repaired, pa.array([False] * len(text), pa.bool_())
    texts, flags, splits = [], [], []
    for line, flag, is_long in zip(
        text.to_pylist(), repaired.to_pylist(), long.to_pylist(), strict=True
    ):
        pieces = split_long_line(line, limit) if is_long else [line]
        texts += pieces
        flags += [flag] * len(pieces)
        splits += [is_long] * len(pieces)
    return pa.array(texts, pa.string()), pa.array(flags, pa.bool_()), pa.array(splits, pa.bool_())


def sample_text(lines: DataFrame, config: TokenizeConfig) -> list[str]:
    """A seeded sample of about `sp_sample_lines` normalised lines, for training SentencePiece.

    Its size is set by the config, not the corpus, so it may live on the driver.
    """
    total = lines.count()
    fraction = min(1.0, config.sp_sample_lines / max(total, 1))
    text = lines.select(S.TEXT)
    if fraction < 1.0:
        text = text.sample(fraction=fraction, seed=config.seed)
    return [row[0] for row in text.toLocalIterator() if row[0]]


def tokenize(lines: DataFrame, config: TokenizeConfig, sp_model: bytes | None = None) -> DataFrame:
    """Lines (text, repaired) -> TOKENS_SCHEMA rows, in input order.

    Word-level by default; with a SentencePiece model (bytes), its pieces.
    """
    model = lines.sparkSession.sparkContext.broadcast(sp_model) if sp_model else None

    def tokenize_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        processor = load_processor(model.value) if model is not None else None
        for batch in batches:
            text, repaired, split = split_long_lines(batch, config.max_line_chars)
            if processor is not None:
                tokens = encode_pieces_arrow(text, processor, config)
            else:
                tokens = tokenize_arrow(text, config)
            lengths = pc.list_value_length(tokens).cast(pa.int32())
            yield pa.RecordBatch.from_arrays(
                [tokens, lengths, repaired, split], schema=_BATCH_SCHEMA
            )

    tokenized = lines.select(S.TEXT, S.REPAIRED).mapInArrow(
        tokenize_batches, S.spark_ddl(_BATCH_SCHEMA)
    )
    return tokenized.select(
        F.monotonically_increasing_id().alias(S.SEQ_ID), S.TOKENS, S.N_TOKENS, S.REPAIRED, S.SPLIT
    )
