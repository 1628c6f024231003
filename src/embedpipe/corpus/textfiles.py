"""Text files read by the tokenize tasks themselves, in byte ranges cut at line ends.

Spark's text reader passes every line through the JVM (read, UTF-8 check, rows to Arrow,
a socket) before the Python tokenizer sees it, and that was most of tokenize's time. A
file on a file system the workers see (plain, or a .gz or .bz2, which Python decodes as
Hadoop's codecs do) needs none of it: each task reads its byte ranges (an archive whole,
as Spark does) and cuts them into lines by the rules of Hadoop's LineRecordReader, which
Spark's reader uses, so the tokens table is the same either way:

- LF, CRLF and a lone CR each end a line; the last line needs no line end; an empty file
  has no lines;
- a UTF-8 byte-order mark at the start of a file is skipped;
- a line belongs to the range its first byte is in (a range reads on past its end to finish
  its last line, and skips the line it starts inside of);
- invalid UTF-8 is replaced as Spark's `make_valid_utf8` does (one U+FFFD for each maximal
  invalid subpart, Python's "replace"), and the line is flagged `repaired`.

A file that fails to read (a damaged archive) fails the task with `READ_FAILED` and its
URL, which `sources.failed_file` recognises as it does Spark's own read errors.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession

from embedpipe import schemas as S
from embedpipe.config import CorpusConfig
from embedpipe.corpus.sources import READ_FAILED, open_as_spark_reads

READ_BYTES = 1 << 23  # bytes a task reads (and tokenizes) at a time
LINES_SCHEMA = pa.schema([pa.field(S.TEXT, pa.string()), pa.field(S.REPAIRED, pa.bool_())])
_BOM = b"\xef\xbb\xbf"
_LF, _CR = 10, 13
# Archives the tasks decode; those of Spark's other codecs stay with Spark's reader (.zst
# is read to its end before the stage, see `sources`).
ARCHIVES = (".gz", ".bz2")
_SPARK_ONLY = (".zst", ".deflate", ".lz4", ".snappy")
# An archive is cut into at most this many pieces: a piece decodes all the text before it.
ARCHIVE_PIECES = 8
WHOLE = 1 << 62  # the end of an archive's last piece: to its end, whatever its size
_BZ2_RATIO = 4  # text bytes a .bz2 byte, a guess for planning only


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of one file: its lines that start there."""

    url: str
    start: int
    end: int


def reads_itself(urls: Sequence[str], config: CorpusConfig, salvage: Sequence[str]) -> bool:
    """Whether the tasks can read these files themselves: plain text on the local (or a
    mounted) file system, one line a row, nothing to salvage from a damaged archive."""
    if config.format != "text" or config.unit != "line" or salvage or not urls:
        return False
    return all("file" in _protocols(url) and not url.endswith(_SPARK_ONLY) for url in urls)


def _protocols(url: str) -> tuple[str, ...]:
    protocol = fsspec.core.url_to_fs(url)[0].protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def text_bytes(url: str, size: int) -> int:
    """About how many bytes of text a file of `size` bytes holds, to plan its pieces: an
    archive's pieces are cut at offsets of its text, and its last piece reads to its end
    whatever this says. A .gz's trailer holds its (last member's) text size mod 4 GiB."""
    if url.endswith(".gz") and size >= 18:
        with fsspec.open(url, "rb") as f:
            f.seek(size - 4)
            return max(int.from_bytes(f.read(4), "little"), size)
    return size * _BZ2_RATIO if url.endswith(".bz2") else size


def plan_pieces(sizes: Mapping[str, int], tasks: int) -> list[list[Piece]]:
    """`tasks` lists of pieces, in file order, with about the same number of text bytes
    each (`sizes`): a large file is cut into several pieces, an archive into at most
    ARCHIVE_PIECES, and small files are packed together."""
    share = max(1, -(-sum(sizes.values()) // tasks))
    plan: list[list[Piece]] = [[] for _ in range(tasks)]
    task, room = 0, share
    for url, size in sizes.items():
        archive = url.endswith(ARCHIVES)
        start = 0
        while start < size:
            take = min(room, size - start)
            if archive:
                take = max(take, -(-size // ARCHIVE_PIECES))
            end = start + take
            plan[task].append(Piece(url, start, WHOLE if archive and end >= size else end))
            start, room = end, room - take
            if room <= 0 and task < tasks - 1:
                task, room = task + 1, share
    return [pieces for pieces in plan if pieces] or [[]]


def read_lines_itself(
    spark: SparkSession, sizes: Mapping[str, int], tasks: int
) -> tuple[DataFrame, object]:
    """(one row per task, the function its task turns that row into line batches): what
    the tokenize job maps over in place of Spark's lines."""
    plan = plan_pieces({url: text_bytes(url, size) for url, size in sizes.items()}, tasks)
    frame = spark.range(0, len(plan), 1, len(plan))

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for task in batch.column(0).to_pylist():
                for piece in plan[task]:
                    yield from read_piece(piece)

    return frame, read


def read_piece(piece: Piece, read_bytes: int = READ_BYTES) -> Iterator[pa.RecordBatch]:
    """The lines (text, repaired) that start in `piece`, in batches of about `read_bytes`."""
    try:
        with open_as_spark_reads(piece.url) as f:
            yield from _lines_of(f, piece, read_bytes)
    except (OSError, EOFError, zlib.error) as e:  # gzip's BadGzipFile is an OSError
        raise OSError(f"{READ_FAILED} {piece.url} ({type(e).__name__}: {e})") from e


def _lines_of(f: object, piece: Piece, read_bytes: int) -> Iterator[pa.RecordBatch]:
    """Cut the bytes of `f` from `piece.start` (one byte before it, to see whether a line
    ends there) into the lines starting before `piece.end`."""
    base = max(piece.start - 1, 0)
    if base:
        f.seek(base)  # type: ignore[attr-defined]
    pending = b""
    line_start: int | None = None  # where the next owned line starts (an absolute offset)
    skip = 0  # bytes of a byte-order mark left to drop from the next line
    if piece.start == 0:
        pending = f.read(len(_BOM))  # type: ignore[attr-defined]
        line_start, skip = 0, len(_BOM) if pending == _BOM else 0
    while True:
        block = f.read(read_bytes)  # type: ignore[attr-defined]
        data = pending + block
        at_end = not block
        # A CR as the last byte may be the first half of a CRLF: decide it next time.
        usable = len(data) if at_end or not data.endswith(b"\r") else len(data) - 1
        starts, ends = line_ends(np.frombuffer(data, np.uint8, usable))
        if line_start is None:  # the first line that starts in the piece
            after = np.flatnonzero(ends + base >= piece.start)
            if after.size == 0:
                if at_end:
                    return
                pending, base = data[usable:], base + usable
                continue
            line_start = int(ends[after[0]]) + base
            keep = slice(int(after[0]) + 1, None)
            starts, ends = starts[keep], ends[keep]
        lines = _owned_lines(data, base, line_start, starts, ends, piece.end, skip)
        if lines is not None:
            yield lines
            skip = 0
        if len(ends):
            line_start = int(ends[-1]) + base
        if line_start >= piece.end:
            return
        if at_end:  # the last line, without a line end
            tail = data[line_start - base + skip :]
            if tail:
                yield repair_utf8(pa.array([tail], pa.binary()))
            return
        pending, base = data[line_start - base :], line_start


def line_ends(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where each line end starts, where it ends) in `data`: LF, CRLF, lone CR."""
    cr = data == _CR
    lf = data == _LF
    lf_after_cr = np.zeros(len(data), bool)
    lf_after_cr[1:] = lf[1:] & cr[:-1]
    starts = np.flatnonzero(cr | (lf & ~lf_after_cr))
    ends = starts + 1
    crlf = cr[starts] & np.append(lf, False)[starts + 1]
    ends[crlf] += 1
    return starts, ends


def _owned_lines(
    data: bytes,
    base: int,
    line_start: int,
    starts: np.ndarray,
    ends: np.ndarray,
    end: int,
    skip: int = 0,
) -> pa.RecordBatch | None:
    """The complete lines from `line_start` whose first byte is before `end`, the first
    without its first `skip` bytes (a byte-order mark)."""
    first = np.concatenate([[line_start - base], ends[:-1]]) if len(ends) else ends
    owned = first + base < end
    first, last = first[owned], starts[owned]
    if not len(first):
        return None
    first[0] += skip
    lengths = last - first
    offsets = np.zeros(len(first) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    buffer = np.frombuffer(data, np.uint8)
    # The bytes of every line, line ends left out: +1 where a line starts, -1 where it
    # ends, and the running sum marks the bytes inside lines.
    marks = np.zeros(len(buffer) + 1, np.int8)
    marks[first] += 1
    marks[last] -= 1
    body = buffer[np.cumsum(marks[:-1], dtype=np.int8).astype(bool)]
    texts = pa.Array.from_buffers(
        pa.binary(),
        len(first),
        [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(body)],
    )
    return repair_utf8(texts)


def repair_utf8(texts: pa.BinaryArray) -> pa.RecordBatch:
    """(text, repaired) of raw lines: invalid UTF-8 replaced as Spark's make_valid_utf8.

    Checked over the whole batch in Arrow; only a batch with invalid bytes looks at its
    non-ASCII lines one by one."""
    repaired = np.zeros(len(texts), bool)
    try:
        texts.view(pa.string()).validate(full=True)
    except pa.ArrowInvalid:
        suspects = np.flatnonzero(
            ~pc.string_is_ascii(texts.view(pa.string())).to_numpy(zero_copy_only=False)
        )
        fixed = []
        for i in suspects:
            raw = texts[int(i)].as_py()
            text = raw.decode("utf-8", "replace").encode()
            repaired[i] = text != raw
            fixed.append(text)
        mask = np.zeros(len(texts), bool)
        mask[suspects] = True
        texts = pc.replace_with_mask(texts, pa.array(mask), pa.array(fixed, pa.binary()))
    return pa.RecordBatch.from_arrays(
        [texts.view(pa.string()), pa.array(repaired)], schema=LINES_SCHEMA
    )
