"""tokenize: lines -> one row per sequence with its token strings (Arrow batches, no UDF).

The rows are made and written by the Python side of each task (see `parts`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame

from embedpipe import schemas as S
from embedpipe.config import TokenizeConfig
from embedpipe.corpus.sources import CONTROL_BYTES
from embedpipe.corpus.spark.parts import (
    PartWriter,
    finish_table,
    part_name,
    task_partition,
    write_table,
)
from embedpipe.corpus.vocab import COUNTS, TokenCounter
from embedpipe.text import tokenize_arrow
from embedpipe.text.tokenizer import split_long_line

_BATCH_SCHEMA = pa.schema([f for f in S.TOKENS_SCHEMA if f.name != S.SEQ_ID])
_CONTROL = np.zeros(256, bool)
_CONTROL[list(CONTROL_BYTES)] = True
_CONTROL_TABLE = dict.fromkeys(CONTROL_BYTES, " ")


def replace_controls(texts: pa.Array) -> tuple[pa.StringArray, int]:
    """(texts with every NUL and control character but tab and line ends replaced by a
    space, how many strings held one); null becomes "".

    They are single bytes in UTF-8 (never part of a longer character), so the bytes are
    replaced in place over the whole batch, offsets unchanged.
    """
    texts = pc.fill_null(texts, "").cast(pa.string())
    if len(texts) == 0:
        return texts, 0
    buffers = texts.buffers()
    offsets = np.frombuffer(buffers[1], np.int32, count=len(texts) + 1, offset=4 * texts.offset)
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(buffers[2], np.uint8)[lo:hi] if buffers[2] is not None else None
    if data is None or not data.size:
        return texts, 0
    bad = _CONTROL[data]
    if not bad.any():
        return texts, 0
    rows = np.searchsorted(offsets, np.flatnonzero(bad) + lo, side="right") - 1
    cleaned = np.where(bad, np.uint8(0x20), data)
    new_offsets = (offsets - lo).astype(np.int32)
    out = pa.StringArray.from_buffers(
        len(texts), pa.py_buffer(new_offsets), pa.py_buffer(cleaned.tobytes())
    )
    return out, int(np.unique(rows).size)


def replace_controls_line(text: str) -> str:
    """`replace_controls` for one string (the SentencePiece sample on the driver)."""
    return text.translate(_CONTROL_TABLE)


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


SLICE_BYTES = 1 << 24  # text tokenized at a time


def text_slices(text: pa.Array, limit: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges covering `text`, each of at most `limit` bytes of text
    (or one row, when a row alone is longer)."""
    n = len(text)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(pc.binary_length(pc.fill_null(text, "")).to_numpy(), out=offsets[1:])
    if offsets[-1] <= limit:
        return [(0, n)]
    ranges, start = [], 0
    while start < n:
        stop = int(np.searchsorted(offsets, offsets[start] + limit, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        ranges.append((start, stop))
        start = stop
    return ranges


def sample_text(lines: DataFrame, config: TokenizeConfig) -> list[str]:
    """A seeded sample of about `sp_sample_lines` normalised lines, for training SentencePiece.

    Its size is set by the config, not the corpus, so it may live on the driver.
    """
    total = lines.count()
    fraction = min(1.0, config.sp_sample_lines / max(total, 1))
    text = lines.select(S.TEXT)
    if fraction < 1.0:
        text = text.sample(fraction=fraction, seed=config.seed)
    return [replace_controls_line(row[0]) for row in text.toLocalIterator() if row[0]]


def tokenize_batch(
    batch: pa.RecordBatch, config: TokenizeConfig, processor: Any = None
) -> pa.RecordBatch:
    """Lines (text, repaired) -> (tokens, n_tokens, repaired, split); long lines are cut."""
    text, repaired, split = split_long_lines(batch, config.max_line_chars)
    if processor is not None:
        from embedpipe.text.sentencepiece import encode_pieces_arrow

        def tokenize(texts: pa.Array) -> pa.Array:
            return encode_pieces_arrow(texts, processor, config)
    else:

        def tokenize(texts: pa.Array) -> pa.Array:
            return tokenize_arrow(texts, config)

    # A slice of the text at a time: the word splitter's temporaries are several times
    # its text, and a batch of long lines (a 100 MB line, split) can be large.
    slices = [tokenize(text.slice(a, b - a)) for a, b in text_slices(text, SLICE_BYTES)]
    tokens = slices[0] if len(slices) == 1 else pa.concat_arrays(slices)
    lengths = pc.list_value_length(tokens).cast(pa.int32())
    return pa.RecordBatch.from_arrays([tokens, lengths, repaired, split], schema=_BATCH_SCHEMA)


_STATS = (
    "sequences",
    "tokens",
    "invalid_utf8_lines",
    "control_char_lines",
    "split_pieces",
    "empty_lines",
)
_STATS_SCHEMA = pa.schema([pa.field(name, pa.int64()) for name in _STATS])


def add_stats(stats: dict[str, int], lines: pa.RecordBatch, tokenized: pa.RecordBatch) -> None:
    """Add one batch's sequences, tokens and empty lines, the lines (before any cut) that
    held invalid UTF-8 and the pieces of cut lines to `stats`."""
    lengths = tokenized.column(S.N_TOKENS).to_numpy()
    stats["sequences"] += tokenized.num_rows
    stats["tokens"] += int(lengths.sum())
    stats["empty_lines"] += int(np.count_nonzero(lengths == 0))
    repaired = lines.column(S.REPAIRED).to_numpy(zero_copy_only=False)
    stats["invalid_utf8_lines"] += int(np.count_nonzero(repaired))
    split = tokenized.column(S.SPLIT).to_numpy(zero_copy_only=False)
    stats["split_pieces"] += int(np.count_nonzero(split))


def write_tokens(
    lines: DataFrame,
    config: TokenizeConfig,
    out: str,
    sp_model: bytes | None = None,
    counts_out: str | None = None,
    read_lines: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]] | None = None,
) -> dict[str, int]:
    """Lines (text, repaired) -> the tokens table at `out`, and its counts.

    `lines` is Spark's lines, or, with `read_lines`, a row for each task that `read_lines`
    turns into the task's lines in batches (`textfiles.read_lines_itself`).

    NUL and other control characters (not tab or line ends) are replaced by spaces first
    and the lines that held one counted (`control_char_lines`): they separate words
    anyway, and a SentencePiece model should not learn them as pieces.

    Each task tokenises its partition in Arrow batches and writes `part-<partition>.parquet`
    (TOKENS_SCHEMA, in input order) and its token counts `part-<partition>.parquet` (token,
    count) in `counts_out` (default `<out>/_counts`; the stage: the side table
    `tokens.counts/`), which build_vocab sums instead of reading every token again. seq_id is
    (partition << 33) + row number in the partition, as Spark's monotonically_increasing_id.
    Word-level by default; with a SentencePiece model (bytes), its pieces.
    """
    model = lines.sparkSession.sparkContext.broadcast(sp_model) if sp_model else None
    out = out.rstrip("/")
    counts_out = (counts_out or f"{out}/{COUNTS}").rstrip("/")

    def tokenize_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        partition = task_partition()
        processor = None
        if model is not None:  # imported here: word-level tasks skip loading sentencepiece
            from embedpipe.text.sentencepiece import load_processor

            processor = load_processor(model.value)
        writer = PartWriter(f"{out}/{part_name(partition)}", S.TOKENS_SCHEMA)
        counter = TokenCounter()
        stats = dict.fromkeys(_STATS, 0)
        next_id = partition << 33
        try:
            for batch in read_lines(batches) if read_lines is not None else batches:
                text, controls = replace_controls(batch.column(S.TEXT))
                stats["control_char_lines"] += controls
                batch = pa.RecordBatch.from_arrays(
                    [text, batch.column(S.REPAIRED)], names=[S.TEXT, S.REPAIRED]
                )
                tokenized = tokenize_batch(batch, config, processor)
                n = tokenized.num_rows
                seq_ids = pa.array(np.arange(next_id, next_id + n, dtype=np.int64))
                next_id += n
                writer.write(
                    pa.RecordBatch.from_arrays(
                        [seq_ids, *tokenized.columns], schema=S.TOKENS_SCHEMA
                    )
                )
                counter.add(pc.list_flatten(tokenized.column(S.TOKENS)))
                add_stats(stats, batch, tokenized)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        counts = counter.table()
        if counts.num_rows:
            write_table(counts, f"{counts_out}/{part_name(partition)}")
        yield pa.RecordBatch.from_pylist([stats], schema=_STATS_SCHEMA)

    frame = lines if read_lines is not None else lines.select(S.TEXT, S.REPAIRED)
    written = frame.mapInArrow(tokenize_partition, S.spark_ddl(_STATS_SCHEMA))
    totals = dict.fromkeys(_STATS, 0)
    for row in written.collect():
        for name in _STATS:
            totals[name] += row[name]
    finish_table(out, S.TOKENS_SCHEMA)
    return totals
