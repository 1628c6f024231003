"""build_vocab: token counts -> ids, special tokens first, then count desc, token asc."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from embedpipe import schemas as S
from embedpipe.config import VocabConfig


def count_tokens(tokens: DataFrame) -> DataFrame:
    """(token, count) of every distinct token; a distributed aggregation."""
    exploded = tokens.select(F.explode(S.TOKENS).alias(S.TOKEN))
    return exploded.groupBy(S.TOKEN).agg(F.count(F.lit(1)).alias(S.COUNT))


def build_vocab(counts: DataFrame, config: VocabConfig) -> DataFrame:
    """VOCAB_SCHEMA rows: specials (count 0) then kept tokens; ids are dense and stable.

    Ties in count are broken by token (UTF-8 byte order), so the same input and config
    give the same ids. The ranking runs in one partition: it sees only tokens that passed
    `min_count`, which is the model's size, not the corpus's.
    """
    kept = counts.where(F.col(S.COUNT) >= config.min_count)
    rank = F.row_number().over(Window.orderBy(F.desc(S.COUNT), F.asc(S.TOKEN)))
    ranked = kept.select(S.TOKEN, S.COUNT, rank.alias("rank"))
    if config.max_size is not None:
        ranked = ranked.where(F.col("rank") <= config.max_size)
    words = ranked.select(
        (F.col("rank") - 1 + len(S.SPECIAL_TOKENS)).cast("int").alias(S.ID),
        S.TOKEN,
        F.col(S.COUNT).cast("bigint").alias(S.COUNT),
    )
    spark = counts.sparkSession
    specials = spark.createDataFrame(
        [(i, t, 0) for i, t in enumerate(S.SPECIAL_TOKENS)], S.spark_ddl(S.VOCAB_SCHEMA)
    )
    return specials.unionByName(words).coalesce(1).orderBy(S.ID)
