"""The Arrow schema of every table the pipeline writes; column names as constants.

These are the contracts between stages and with consumers: any Parquet reader
(Spark, DuckDB, pyarrow, Polars) reads the tables with no code of ours.
Ids are int32, counts int64, weights float32.
"""

from __future__ import annotations

import pyarrow as pa

# Special tokens, always the first ids of a vocabulary, in this order.
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
PAD_ID, UNK_ID = 0, 1

# Column names.
TEXT = "text"
SOURCE = "source"
SEQ_ID = "seq_id"
TOKENS = "tokens"
N_TOKENS = "n_tokens"
REPAIRED = "repaired"
SPLIT = "split"
REASON = "reason"
RECORD = "record"
ID = "id"
TOKEN = "token"
COUNT = "count"
KEEP_PROB = "keep_prob"
NOISE_PROB = "noise_prob"
IDS = "ids"
LENGTH = "length"
BUCKET = "bucket"
ROW = "row"
COL = "col"
WEIGHT = "weight"
SHARD = "shard"
VECTOR = "vector"

TOKENS_SCHEMA = pa.schema(
    [
        pa.field(SEQ_ID, pa.int64(), nullable=False),
        pa.field(TOKENS, pa.list_(pa.string()), nullable=False),
        pa.field(N_TOKENS, pa.int32(), nullable=False),
        # True when the line held invalid UTF-8 that was replaced by U+FFFD.
        pa.field(REPAIRED, pa.bool_(), nullable=False),
        # True when the row is a piece of a line longer than tokenize.max_line_chars.
        pa.field(SPLIT, pa.bool_(), nullable=False),
    ]
)

# Records set aside by the tokenize stage (the side table tokens.rejects/), never dropped.
REJECTS_SCHEMA = pa.schema(
    [
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(RECORD, pa.string(), nullable=False),
    ]
)

VOCAB_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.int32(), nullable=False),
        pa.field(TOKEN, pa.string(), nullable=False),
        pa.field(COUNT, pa.int64(), nullable=False),
        # word2vec's subsampling keep probability, min(1, (sqrt(f / sT) + 1) sT / f).
        pa.field(KEEP_PROB, pa.float64(), nullable=False),
        # The negative-sampling distribution, count ** 0.75 normalised (0 for specials).
        pa.field(NOISE_PROB, pa.float64(), nullable=False),
    ]
)

SEQUENCES_SCHEMA = pa.schema(
    [
        pa.field(IDS, pa.list_(pa.int32()), nullable=False),
        pa.field(LENGTH, pa.int32(), nullable=False),
    ]
)

# Written partitioned by `bucket` (hive style: buckets/bucket=k/part-*.parquet).
BUCKETS_SCHEMA = pa.schema([*SEQUENCES_SCHEMA, pa.field(BUCKET, pa.int32(), nullable=False)])

# Written partitioned by `shard` (cooccur/shard=k/), rows sorted by (row, col) within a shard;
# shard k holds the rows with row % S == k (balanced, unlike ranges of frequency-sorted ids).
COOCCUR_SCHEMA = pa.schema(
    [
        pa.field(ROW, pa.int32(), nullable=False),
        pa.field(COL, pa.int32(), nullable=False),
        pa.field(WEIGHT, pa.float32(), nullable=False),
    ]
)

# Exported vectors for Spark / DuckDB / Polars.
VECTORS_SCHEMA = pa.schema(
    [
        pa.field(TOKEN, pa.string(), nullable=False),
        pa.field(VECTOR, pa.list_(pa.float32()), nullable=False),
    ]
)


def spark_ddl(schema: pa.Schema) -> str:
    """The Spark DDL string of an Arrow schema, for `mapInArrow` and typed reads."""
    names = {
        pa.int32(): "int",
        pa.int64(): "bigint",
        pa.float32(): "float",
        pa.float64(): "double",
        pa.string(): "string",
        pa.bool_(): "boolean",
        pa.binary(): "binary",
    }

    def ddl(t: pa.DataType) -> str:
        if pa.types.is_list(t):
            return f"array<{ddl(t.value_type)}>"
        return names[t]

    return ", ".join(f"{f.name} {ddl(f.type)}" for f in schema)
