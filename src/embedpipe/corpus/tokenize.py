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


def tokenize(lines: DataFrame, config: TokenizeConfig) -> DataFrame:
    """Lines (text, repaired) -> TOKENS_SCHEMA rows, in input order."""

    def tokenize_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            tokens = tokenize_arrow(batch.column(S.TEXT), config)
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column(S.SEQ_ID),
                    tokens,
                    pc.list_value_length(tokens).cast(pa.int32()),
                    batch.column(S.REPAIRED),
                ],
                schema=S.TOKENS_SCHEMA,
            )

    with_ids = lines.select(F.monotonically_increasing_id().alias(S.SEQ_ID), S.TEXT, S.REPAIRED)
    return with_ids.mapInArrow(tokenize_batches, S.spark_ddl(S.TOKENS_SCHEMA))
