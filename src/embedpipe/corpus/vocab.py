"""build_vocab: token counts -> ids, special tokens first, then count desc, token asc."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from embedpipe import schemas as S
from embedpipe.config import VocabConfig

_COUNTS_SCHEMA = pa.schema([pa.field(S.TOKEN, pa.string()), pa.field(S.COUNT, pa.int64())])
FLUSH_TOKENS = 1 << 23


def merge_counts(partial: pa.Table | None, tokens: list[pa.Array]) -> pa.Table:
    """Add the counts of `tokens` to a (token, count) table (Arrow's C++ hash aggregation)."""
    counted = pc.value_counts(pa.chunked_array(tokens, pa.string()))
    table = pa.Table.from_arrays(
        [counted.field("values"), counted.field("counts")], schema=_COUNTS_SCHEMA
    )
    if partial is not None:
        table = pa.concat_tables([partial, table])
        table = table.group_by(S.TOKEN).aggregate([(S.COUNT, "sum")])
        table = table.rename_columns(
            [S.COUNT if c.endswith("_sum") else c for c in table.column_names]
        )
        table = table.select([S.TOKEN, S.COUNT])
    return table


def count_tokens(tokens: DataFrame) -> DataFrame:
    """(token, count) of every distinct token.

    Each partition counts its tokens in Arrow (hash aggregation in C++) and emits only its
    distinct tokens; Spark's shuffle sums those partial counts.
    """

    def count_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        partial, pending, pending_tokens = None, [], 0
        for batch in batches:
            flat = pc.list_flatten(batch.column(S.TOKENS))
            pending.append(flat)
            pending_tokens += len(flat)
            if pending_tokens >= FLUSH_TOKENS:
                partial = merge_counts(partial, pending)
                pending, pending_tokens = [], 0
        if pending:
            partial = merge_counts(partial, pending)
        if partial is not None:
            yield from partial.to_batches(max_chunksize=1 << 20)

    partial = tokens.select(S.TOKENS).mapInArrow(count_partition, S.spark_ddl(_COUNTS_SCHEMA))
    return partial.groupBy(S.TOKEN).agg(F.sum(S.COUNT).cast("bigint").alias(S.COUNT))


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
        [(i, t, 0) for i, t in enumerate(S.SPECIAL_TOKENS)], "id int, token string, count bigint"
    )
    vocab = specials.unionByName(words).coalesce(1)
    return with_sampling_columns(vocab, config).orderBy(S.ID)


def with_sampling_columns(vocab: DataFrame, config: VocabConfig) -> DataFrame:
    """Add `keep_prob` (word2vec subsampling) and `noise_prob` (unigram ** power) per id.

    T is the number of corpus tokens the vocabulary covers (word2vec's train_words);
    special tokens (count 0) get 0 for both.
    """
    everything = Window.partitionBy()
    count = F.col(S.COUNT).cast("double")
    threshold = F.lit(config.sample) * F.sum(count).over(everything)
    if config.sample > 0:
        keep = F.least(F.lit(1.0), (F.sqrt(count / threshold) + 1) * threshold / count)
    else:
        keep = F.lit(1.0)
    weight = F.pow(count, F.lit(config.noise_power))
    return vocab.select(
        S.ID,
        S.TOKEN,
        S.COUNT,
        F.when(count > 0, keep).otherwise(0.0).alias(S.KEEP_PROB),
        (weight / F.sum(weight).over(everything)).alias(S.NOISE_PROB),
    )
