"""build_vocab: token counts -> ids, special tokens first, then count desc, token asc.

One Spark job, its heavy parts in Arrow: map tasks read the partial counts the tokenize
tasks wrote (the side table tokens.counts/, or count the tokens table when it has none) and
send each token's rows as Arrow IPC blocks to one of R reduce tasks (`token_buckets`); a
reduce task sums its tokens, counts them and keeps those with `min_count`; one task ranks the
kept tokens (model-sized) and writes the table. The JVM moves blocks and computes the noise
weights count ** power with Spark's own `pow` (Java's StrictMath: numpy's libm `pow`
differs in the last bit for some counts, and the table keeps Spark's values).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Observation, SparkSession
from pyspark.sql import functions as F

from embedpipe import schemas as S
from embedpipe.config import VocabConfig
from embedpipe.corpus.spark.parts import (
    data_files,
    finish_table,
    map_parts,
    part_name,
    table_of,
    write_table,
)

COUNTS_SCHEMA = pa.schema([pa.field(S.TOKEN, pa.string()), pa.field(S.COUNT, pa.int64())])
COUNTS = "_counts"  # the side table tokens.counts/: each tokenize task's token counts
FLUSH_TOKENS = 1 << 23


def merge_counts(partial: pa.Table | None, tokens: list[pa.Array]) -> pa.Table:
    """Add the counts of `tokens` to a (token, count) table (Arrow's C++ hash aggregation)."""
    counted = pc.value_counts(pa.chunked_array(tokens, pa.string()))
    table = pa.Table.from_arrays(
        [counted.field("values"), counted.field("counts")], schema=COUNTS_SCHEMA
    )
    return table if partial is None else _sum_tables([partial, table])


def _sum_tables(tables: list[pa.Table]) -> pa.Table:
    """One (token, count) row per token of several tables, counts summed."""
    table = pa.concat_tables([t.select([S.TOKEN, S.COUNT]).cast(COUNTS_SCHEMA) for t in tables])
    table = table.group_by(S.TOKEN, use_threads=False).aggregate([(S.COUNT, "sum")])
    return table.rename_columns([S.TOKEN, S.COUNT]).select([S.TOKEN, S.COUNT])


class TokenCounter:
    """Counts tokens over many batches; holds one row per distinct token (and a buffer)."""

    def __init__(self, flush_tokens: int = FLUSH_TOKENS) -> None:
        self.flush_tokens = flush_tokens
        self.partial: pa.Table | None = None
        self.pending: list[pa.Array] = []
        self.pending_tokens = 0
        self.pending_tables: list[pa.Table] = []
        self.pending_rows = 0

    def add(self, tokens: pa.Array) -> None:
        self.pending.append(tokens)
        self.pending_tokens += len(tokens)
        if self.pending_tokens >= self.flush_tokens:
            self.partial = merge_counts(self.partial, self.pending)
            self.pending, self.pending_tokens = [], 0

    def add_counts(self, counts: pa.Table) -> None:
        """Add a (token, count) table (summed with the rest when `table` is called, or when
        enough rows wait)."""
        self.pending_tables.append(counts)
        self.pending_rows += counts.num_rows
        if self.pending_rows >= self.flush_tokens:
            self._sum_pending_tables()

    def _sum_pending_tables(self) -> None:
        if self.pending_tables:
            tables = (
                self.pending_tables
                if self.partial is None
                else [self.partial, *self.pending_tables]
            )
            self.partial = _sum_tables(tables)
            self.pending_tables, self.pending_rows = [], 0

    def table(self) -> pa.Table:
        """(token, count) of everything added, sorted by token (a canonical file)."""
        if self.pending:
            self.partial = merge_counts(self.partial, self.pending)
            self.pending, self.pending_tokens = [], 0
        self._sum_pending_tables()
        if self.partial is None:
            return COUNTS_SCHEMA.empty_table()
        return self.partial.sort_by(S.TOKEN).combine_chunks()


def token_buckets(tokens: pa.Array, buckets: int) -> np.ndarray:
    """A reduce task for every token: a fixed function of its bytes (first and last 8
    bytes and length, mixed), the same in every process (unlike Python's `hash`)."""
    n = len(tokens)
    if buckets == 1 or n == 0:
        return np.zeros(n, np.int32)
    tokens = tokens.cast(pa.string())
    offsets = np.frombuffer(tokens.buffers()[1], np.int32, count=n + 1, offset=4 * tokens.offset)
    data = tokens.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    data = np.concatenate([data, np.zeros(8, np.uint8)])  # room to read past the end
    starts, ends = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
    lengths = ends - starts
    j = np.arange(8)
    weights = np.left_shift(np.uint64(1), (8 * j).astype(np.uint64))
    head = np.where(j < lengths[:, None], data[starts[:, None] + j], 0).astype(np.uint64)
    tail_at = np.maximum(ends - 8, starts)[:, None] + j
    tail = np.where(tail_at < ends[:, None], data[tail_at], 0).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix((head * weights).sum(axis=1) ^ _mix((tail * weights).sum(axis=1)))
        h = _mix(h ^ lengths.astype(np.uint64))
    return (h % np.uint64(buckets)).astype(np.int32)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def rank_words(counts: pa.Table, config: VocabConfig) -> pa.Table:
    """(id, token, count) of the vocabulary: the specials (count 0), then the tokens with
    at least `min_count`, by count descending, then token (UTF-8 byte order), at most
    `max_size` of them."""
    kept = counts.filter(pc.greater_equal(counts.column(S.COUNT), config.min_count))
    kept = kept.sort_by([(S.COUNT, "descending"), (S.TOKEN, "ascending")])
    if config.max_size is not None:
        kept = kept.slice(0, config.max_size)
    n_special = len(S.SPECIAL_TOKENS)
    tokens = pa.concat_arrays(
        [pa.array(S.SPECIAL_TOKENS, pa.string()), kept.column(S.TOKEN).combine_chunks()]
    )
    count = np.concatenate([np.zeros(n_special, np.int64), kept.column(S.COUNT).to_numpy()])
    ids = np.arange(len(count), dtype=np.int32)
    return pa.table({S.ID: ids, S.TOKEN: tokens, S.COUNT: count})


def sampling_columns(
    counts: np.ndarray, noise_weight: np.ndarray, config: VocabConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(keep_prob, noise_prob) by id, from counts and count ** noise_power.

    keep_prob is word2vec's min(1, (sqrt(c / t) + 1) * t / c), t = sample * T, T the tokens
    the vocabulary covers; noise_prob is the weight over the sum of weights, summed in id
    order. Special tokens (count 0) get 0 for both; so does everything in a vocabulary
    with no word.
    """
    c = counts.astype(np.float64)
    word = c > 0
    keep = np.zeros(len(c))
    if config.sample > 0:
        threshold = config.sample * float(np.cumsum(c)[-1]) if len(c) else 0.0
        if threshold > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                value = np.minimum(1.0, ((np.sqrt(c / threshold) + 1) * threshold) / c)
            keep = np.where(word, value, 0.0)
    else:
        keep = np.where(word, 1.0, 0.0)
    total = float(np.cumsum(noise_weight)[-1]) if len(noise_weight) else 0.0
    noise = noise_weight / total if total > 0 else np.zeros(len(c))
    return keep, noise


def route_counts(
    batches: Iterator[pa.RecordBatch], part: int, *, counted: bool, reducers: int
) -> Iterator[pa.RecordBatch]:
    """Map task: one part file's token counts as Arrow IPC blocks, one block per reduce
    task its tokens hash to (`token_buckets`). `counted`: the part holds a tokenize task's
    counts (one row per token); else it is a part of the tokens table, counted here."""
    if counted:
        table = table_of(batches, COUNTS_SCHEMA)
    else:
        counter = TokenCounter()
        for batch in batches:
            counter.add(pc.list_flatten(batch.column(S.TOKENS)))
        table = counter.table()
    buckets = token_buckets(table.column(S.TOKEN).combine_chunks(), reducers)
    for r in np.unique(buckets).tolist():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, COUNTS_SCHEMA) as writer:
            writer.write_table(table.filter(pa.array(buckets == r)))
        yield pa.RecordBatch.from_pylist(
            [{"pid": r, "block": sink.getvalue().to_pybytes()}], schema=_BLOCK_SCHEMA
        )


def sum_counts(batches: Iterator[pa.RecordBatch], *, min_count: int) -> Iterator[pa.RecordBatch]:
    """Reduce task: its tokens' summed counts, those with `min_count` kept; first a row
    (token null) with the number of distinct tokens it saw."""
    counter = TokenCounter()
    for batch in batches:
        for block in batch.column("block"):
            counter.add_counts(pa.ipc.open_stream(block.as_buffer()).read_all())
    table = counter.table()
    kept = table.filter(pc.greater_equal(table.column(S.COUNT), min_count))
    yield pa.RecordBatch.from_pylist(
        [{S.TOKEN: None, S.COUNT: table.num_rows}], schema=COUNTS_SCHEMA
    )
    yield from kept.to_batches()


def rank_and_write(
    batches: Iterator[pa.RecordBatch], *, config: VocabConfig, out: str
) -> Iterator[pa.RecordBatch]:
    """The one task that ranks the kept tokens (model-sized) and writes the vocabulary file;
    yields its size and the tokens it covers."""
    summed = table_of(batches, _WEIGHTED_SCHEMA)
    ranked = rank_words(summed.select([S.TOKEN, S.COUNT]), config)
    # Each kept token's weight from its row; the specials (first, count 0) weigh 0.
    n_special = len(S.SPECIAL_TOKENS)
    rows = pc.index_in(ranked.column(S.TOKEN)[n_special:], value_set=summed.column(S.TOKEN))
    weight = np.concatenate([np.zeros(n_special), summed.column(_WEIGHT).take(rows).to_numpy()])
    counts = ranked.column(S.COUNT).to_numpy()
    keep, noise = sampling_columns(counts, weight, config)
    columns = [ranked.column(c) for c in (S.ID, S.TOKEN, S.COUNT)]
    vocab = pa.Table.from_arrays([*columns, pa.array(keep), pa.array(noise)], schema=S.VOCAB_SCHEMA)
    write_table(vocab, f"{out}/{part_name(0)}", empty_ok=True)
    yield pa.RecordBatch.from_pylist(
        [{"size": vocab.num_rows, "covered": int(counts.sum())}], schema=_WRITTEN_SCHEMA
    )


def write_specials_only(config: VocabConfig, out: str) -> dict[str, int]:
    """The vocabulary of a corpus without tokens: the special tokens alone (no weights)."""
    empty = rank_words(COUNTS_SCHEMA.empty_table(), config)
    specials = [empty.column(c) for c in (S.ID, S.TOKEN, S.COUNT)]
    zeros = pa.array(np.zeros(empty.num_rows))
    table = pa.Table.from_arrays([*specials, zeros, zeros], schema=S.VOCAB_SCHEMA)
    write_table(table, f"{out}/{part_name(0)}")
    return {"size": table.num_rows, "covered": 0}


def write_vocab(
    spark: SparkSession,
    tokens_url: str,
    config: VocabConfig,
    out: str,
    counts_url: str | None = None,
) -> dict[str, int]:
    """The vocabulary of the tokens table at `tokens_url` as one file at `out`
    (VOCAB_SCHEMA, sorted by id); returns distinct_tokens, vocab_size, covered_tokens.

    Sums the partial counts at `counts_url` (default `<tokens_url>/_counts`) when there are
    any."""
    partial_url = counts_url or f"{tokens_url.rstrip('/')}/{COUNTS}"
    if data_files(partial_url):
        source, columns, counted = partial_url, [S.TOKEN, S.COUNT], True
    else:  # a tokens table written without its counts: count it here
        source, columns, counted = tokens_url, [S.TOKENS], False
    reducers = len(data_files(source))
    out = out.rstrip("/")
    route = functools.partial(route_counts, counted=counted, reducers=reducers)
    blocks = map_parts(spark, source, columns, route, _BLOCK_SCHEMA)
    summed = blocks.repartitionById(reducers, "pid").mapInArrow(
        functools.partial(sum_counts, min_count=config.min_count), S.spark_ddl(COUNTS_SCHEMA)
    )
    distinct = Observation("distinct")
    summed = summed.observe(
        distinct,
        F.coalesce(F.sum(F.when(F.col(S.TOKEN).isNull(), F.col(S.COUNT))), F.lit(0)).alias("n"),
    )
    # The noise weight count ** power is Spark's `pow` (see above), computed before the one
    # task that ranks the kept tokens and writes the table (in the same Python function).
    weighted = summed.where(F.col(S.TOKEN).isNotNull()).withColumn(
        _WEIGHT, F.pow(F.col(S.COUNT).cast("double"), F.lit(config.noise_power))
    )
    rank = functools.partial(rank_and_write, config=config, out=out)
    written = weighted.repartition(1).mapInArrow(rank, S.spark_ddl(_WRITTEN_SCHEMA)).collect()
    result = written[0].asDict() if written else write_specials_only(config, out)
    finish_table(out, S.VOCAB_SCHEMA)
    return {
        "distinct_tokens": int(distinct.get["n"]),
        "vocab_size": result["size"],
        "covered_tokens": result["covered"],
    }


_WEIGHT = "noise_weight"
_WEIGHTED_SCHEMA = pa.schema(
    [
        pa.field(S.TOKEN, pa.string()),
        pa.field(S.COUNT, pa.int64()),
        pa.field(_WEIGHT, pa.float64()),
    ]
)
_BLOCK_SCHEMA = pa.schema([pa.field("pid", pa.int32()), pa.field("block", pa.binary())])
_WRITTEN_SCHEMA = pa.schema([pa.field("size", pa.int64()), pa.field("covered", pa.int64())])
