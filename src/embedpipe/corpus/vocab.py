"""build_vocab: token counts -> ids, special tokens first, then count desc, token asc."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from embedpipe import schemas as S
from embedpipe.config import VocabConfig

COUNTS_SCHEMA = pa.schema([pa.field(S.TOKEN, pa.string()), pa.field(S.COUNT, pa.int64())])
COUNTS = "_counts"  # tokens/_counts/: each tokenize task's token counts (hidden from readers)
FLUSH_TOKENS = 1 << 23


def merge_counts(partial: pa.Table | None, tokens: list[pa.Array]) -> pa.Table:
    """Add the counts of `tokens` to a (token, count) table (Arrow's C++ hash aggregation)."""
    counted = pc.value_counts(pa.chunked_array(tokens, pa.string()))
    table = pa.Table.from_arrays(
        [counted.field("values"), counted.field("counts")], schema=COUNTS_SCHEMA
    )
    if partial is not None:
        table = pa.concat_tables([partial, table])
        table = table.group_by(S.TOKEN, use_threads=False).aggregate([(S.COUNT, "sum")])
        table = table.rename_columns(
            [S.COUNT if c.endswith("_sum") else c for c in table.column_names]
        )
        table = table.select([S.TOKEN, S.COUNT])
    return table


class TokenCounter:
    """Counts tokens over many batches; holds one row per distinct token (and a buffer)."""

    def __init__(self, flush_tokens: int = FLUSH_TOKENS) -> None:
        self.flush_tokens = flush_tokens
        self.partial: pa.Table | None = None
        self.pending: list[pa.Array] = []
        self.pending_tokens = 0

    def add(self, tokens: pa.Array) -> None:
        self.pending.append(tokens)
        self.pending_tokens += len(tokens)
        if self.pending_tokens >= self.flush_tokens:
            self.partial = merge_counts(self.partial, self.pending)
            self.pending, self.pending_tokens = [], 0

    def table(self) -> pa.Table:
        """(token, count) of everything added, sorted by token (a canonical file)."""
        if self.pending:
            self.partial = merge_counts(self.partial, self.pending)
            self.pending, self.pending_tokens = [], 0
        if self.partial is None:
            return COUNTS_SCHEMA.empty_table()
        return self.partial.sort_by(S.TOKEN).combine_chunks()


def count_tokens(tokens: DataFrame) -> DataFrame:
    """(token, count) of every distinct token of a tokens table.

    Each partition counts its tokens in Arrow (hash aggregation in C++) and emits only its
    distinct tokens; Spark's shuffle sums those partial counts. (The tokenize stage writes
    such partial counts beside its table; `sum_counts` reads them instead.)
    """

    def count_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        counter = TokenCounter()
        for batch in batches:
            counter.add(pc.list_flatten(batch.column(S.TOKENS)))
        yield from counter.table().to_batches(max_chunksize=1 << 20)

    partial = tokens.select(S.TOKENS).mapInArrow(count_partition, S.spark_ddl(COUNTS_SCHEMA))
    return sum_counts(partial)


def sum_counts(partial: DataFrame) -> DataFrame:
    """(token, count) partial counts -> one row per distinct token (one shuffle)."""
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
    # One partition from here on: sorting it orders the table (no range-partitioning job).
    return with_sampling_columns(vocab, config).sortWithinPartitions(S.ID)


def with_sampling_columns(vocab: DataFrame, config: VocabConfig) -> DataFrame:
    """Add `keep_prob` (word2vec subsampling) and `noise_prob` (unigram ** power) per id.

    T is the number of corpus tokens the vocabulary covers (word2vec's train_words);
    special tokens (count 0) get 0 for both, and so does everything in a vocabulary with
    no word (divisions by zero give null there, not an error).
    """
    everything = Window.partitionBy()
    count = F.col(S.COUNT).cast("double")
    threshold = F.lit(config.sample) * F.sum(count).over(everything)
    if config.sample > 0:
        keep = F.least(
            F.lit(1.0),
            F.try_divide((F.sqrt(F.try_divide(count, threshold)) + 1) * threshold, count),
        )
    else:
        keep = F.lit(1.0)
    weight = F.pow(count, F.lit(config.noise_power))
    return vocab.select(
        S.ID,
        S.TOKEN,
        S.COUNT,
        F.when(count > 0, keep).otherwise(0.0).alias(S.KEEP_PROB),
        F.coalesce(F.try_divide(weight, F.sum(weight).over(everything)), F.lit(0.0)).alias(
            S.NOISE_PROB
        ),
    )
