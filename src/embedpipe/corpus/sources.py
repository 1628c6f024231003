"""Finding, sniffing and reading the raw input.

At corpus scale one odd file among millions must not cost the run: a file that cannot be
used is set aside, named with the reason in the tokenize stage's side table `tokens.rejects/` and its
manifest, and the run goes on; it fails only when the files set aside hold more than
`corpus.max_reject_share` of the input bytes, naming them. What happens to each kind of
file:

- text with a few NUL or control bytes among good lines: read; the control characters are
  replaced by spaces when the lines are tokenized (counted, `control_char_lines`);
- invalid UTF-8 (e.g. Latin-1 accents): read; the bytes are replaced by U+FFFD (counted,
  `invalid_utf8_lines`);
- binary (over 10% of its first 8 KiB NUL, control or invalid UTF-8), text in an 8-bit
  encoding with that much invalid UTF-8 (heavy Latin-1) and UTF-16/UTF-32 text (a
  byte-order mark): set aside whole, with the reason (what to convert it with);
- a truncated or corrupt archive (.gz, .bz2, .zst): set aside, and the lines that decoded
  before the damage are kept (Spark's `ignoreCorruptFiles`, for these files only).

The driver lists the files and sniffs the first 8 KiB of each (threads; file names and
heads, never the corpus); the reading is Spark's. An archive damaged past its first
8 KiB shows only when Spark fails on it: the files that fail are then found by a Spark job
that reads every archive to its end, set aside, and the stage runs again. Spark does not
fail on a truncated multi-frame .zst (`SILENT_CODECS`): those files are read to their end
by that job before the stage runs, a decompression pass over them alone.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import reduce
from typing import IO, Any
from urllib.parse import unquote

import fsspec
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from embedpipe import schemas as S
from embedpipe.config import CorpusConfig


class CorpusError(ValueError):
    """The input corpus cannot be used as it is; the message names the path."""


_SNIFF_BYTES = 8192
_BINARY_SHARE = 0.1  # of a file's first bytes NUL, control or invalid UTF-8: binary
_SNIFF_THREADS = 32
_READ_CHUNK = 1 << 24
# Sentence ends: . ! ? and their CJK forms, followed by whitespace (or, for CJK, nothing).
SENTENCE_BOUNDARY = r"(?<=[.!?])\s+|(?<=[。！？])\s*"
# Control characters other than tab, line feed, vertical tab, form feed, carriage return
# (single bytes in UTF-8, so they are counted and replaced byte by byte).
CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F])
# Archives Spark (Hadoop's codecs, by file name suffix) decompresses as it reads; those of
# them the driver can open too. Every other file Spark reads as it is, and so is it sniffed.
_SPARK_CODECS = (".gz", ".bz2", ".zst", ".deflate", ".lz4", ".snappy")
# Archives whose damage Spark does not report: Hadoop's zstd decoder ends a file quietly at
# a truncated frame after complete ones (a multi-frame .zst cut anywhere past its first
# frame reads as a shorter file). These are read to their end before the stage runs.
SILENT_CODECS = (".zst",)
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


@dataclass(frozen=True)
class SetAside:
    """A file not read as it is: why, and whether what decodes of it is still read."""

    reason: str  # e.g. "not text (…)", "truncated or corrupt (…)"
    salvage: bool = False  # a damaged archive: the lines before the damage are kept


def list_input_files(paths: Sequence[str]) -> list[str]:
    """Expand files, directories and globs into a sorted list of data files (URLs kept)."""
    found: list[str] = []
    for path in paths:
        fs, root = fsspec.core.url_to_fs(path)
        if fs.exists(root) and fs.isdir(root):
            candidates = [p for p in fs.find(root) if not _hidden(p, root)]
        elif fs.exists(root):
            candidates = [root]
        else:
            candidates = [p for p in fs.glob(root) if fs.isfile(p)]
        if not candidates:
            raise CorpusError(f"input path {path} does not exist or holds no files")
        found.extend(fs.unstrip_protocol(p) for p in sorted(candidates))
    return found


def _hidden(path: str, root: str) -> bool:
    return any(part.startswith((".", "_")) for part in path[len(root) :].split("/") if part)


def file_sizes(urls: Sequence[str]) -> dict[str, tuple[int, str]]:
    """url -> (size in bytes, modification time) of each file, from the listing."""
    result = {}
    for url in urls:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        result[url] = (
            int(info.get("size") or 0),
            str(info.get("mtime") or info.get("LastModified")),
        )
    return result


def fingerprint_files(files: Sequence[str] | Mapping[str, tuple[int, str]]) -> str:
    """A fingerprint of input files by name, size and modification time (as Hadoop tools do);
    `files`: their URLs, or what `file_sizes` says of them."""
    sizes = files if isinstance(files, Mapping) else file_sizes(files)
    entries = [[url, size, mtime] for url, (size, mtime) in sizes.items()]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


@contextlib.contextmanager
def open_as_spark_reads(url: str) -> Iterator[IO[bytes] | None]:
    """The file's bytes as Spark's text and JSON readers see them: decompressed by its
    suffix as Hadoop's codecs do; None for a codec the driver cannot decode."""
    codec = next((c for c in _SPARK_CODECS if url.endswith(c)), None)
    with fsspec.open(url, "rb") as raw:
        if codec is None:
            yield raw
        elif codec == ".gz":
            with gzip.GzipFile(fileobj=raw) as f:
                yield f
        elif codec == ".bz2":
            with bz2.BZ2File(raw) as f:
                yield f
        elif codec == ".zst" and pa.Codec.is_available("zstd"):
            yield pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd")
        else:
            yield None


def sniff_file(url: str, file_format: str = "text") -> SetAside | None:
    """Why a text or JSON Lines file is set aside, from its first 8 KiB; None: read it.

    Binary (over 10% of the first bytes NUL, control characters or invalid UTF-8) and
    UTF-16/32 files are set aside whole; an archive that fails to decode is set aside
    and salvaged (what Spark decodes before the damage is kept). A few NUL or control bytes
    among text are not a reason: they are replaced when the lines are tokenized.
    """
    if file_format == "parquet":
        return None
    try:
        with open_as_spark_reads(url) as f:
            if f is None:
                return None  # Spark decodes it (.lz4, .snappy, .deflate); damage shows there
            try:
                head = f.read(_SNIFF_BYTES)
            except (OSError, EOFError, ValueError) as e:
                return SetAside(f"truncated or corrupt ({_describe(e)})", salvage=True)
    except (OSError, EOFError, ValueError) as e:
        return SetAside(f"unreadable ({_describe(e)})")
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return SetAside(
                f"{encoding} text (it starts with a byte-order mark): convert it to UTF-8, "
                f"e.g. iconv -f {encoding} -t UTF-8"
            )
    text = head.decode("utf-8", errors="replace")
    invalid = text.count("\ufffd")
    controls = len(head) - len(head.translate(None, CONTROL_BYTES))
    if not head or invalid + controls <= _BINARY_SHARE * len(text):
        return None
    share = f"{(invalid + controls) / len(text):.0%} of the characters of its first {len(head)}"
    if controls <= _BINARY_SHARE * len(text) / 10:  # text, but not UTF-8
        return SetAside(
            f"not UTF-8 text ({share} bytes are invalid UTF-8; Latin-1 or another 8-bit "
            "encoding? convert it to UTF-8, e.g. iconv -f LATIN1 -t UTF-8)"
        )
    return SetAside(f"not text ({share} bytes are NUL, control characters or invalid UTF-8)")


def sniff_files(urls: Sequence[str], file_format: str = "text") -> dict[str, SetAside]:
    """url -> why, for the files to set aside (`sniff_file`), sniffed by a pool of threads
    (on an object store each sniff is a request)."""
    if file_format == "parquet" or not urls:
        return {}
    with ThreadPoolExecutor(min(_SNIFF_THREADS, len(urls))) as pool:
        verdicts = pool.map(lambda url: sniff_file(url, file_format), urls)
        return {url: v for url, v in zip(urls, verdicts, strict=True) if v is not None}


def read_to_end(url: str) -> str | None:
    """Why an archive cannot be decoded to its end (its error), or None when it can."""
    try:
        with open_as_spark_reads(url) as f:
            while f is not None and f.read(_READ_CHUNK):
                pass
    except Exception as e:  # noqa: BLE001 - any decoder error means the same thing here
        return _describe(e)
    return None


_DAMAGE_SCHEMA = pa.schema([pa.field("url", pa.string()), pa.field("error", pa.string())])


def find_damaged(
    spark: SparkSession, urls: Sequence[str], codecs: tuple[str, ...] = _SPARK_CODECS
) -> dict[str, str]:
    """url -> error of the archives among `urls` (those with a suffix in `codecs`) that do
    not decode to their end.

    A Spark job (one task per group of files, each read to its end by the Python side of
    the task): after Spark failed on an archive, to find every damaged one at once instead
    of one per failed run; and before the stage, for the archives whose damage Spark does
    not report (`SILENT_CODECS`).
    """
    urls = [u for u in urls if u.endswith(codecs)]
    if not urls:
        return {}

    def scan(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = []
            for i in batch.column(0).to_pylist():
                error = read_to_end(urls[i])
                if error is not None:
                    rows.append({"url": urls[i], "error": error})
            yield pa.RecordBatch.from_pylist(rows, schema=_DAMAGE_SCHEMA)

    tasks = min(len(urls), 4 * spark.sparkContext.defaultParallelism)
    found = spark.range(0, len(urls), numPartitions=tasks).mapInArrow(
        scan, S.spark_ddl(_DAMAGE_SCHEMA)
    )
    return {row["url"]: row["error"] for row in found.collect()}


_FAILED_FILE = re.compile(r"FAILED_READ_FILE[^\]]*\][^\n]*? reading file (\S+?)\.?(?:\s|$)")
_CAUSE = re.compile(r"Caused by: ([\w.$]+(?:Exception|Error)[^\n]*)")
READ_FAILED = "embedpipe could not read file"  # a task that reads its files itself, failing
_OWN_FAILURE = re.compile(re.escape(READ_FAILED) + r" (\S+) \((.+)\)$", re.MULTILINE)


def failed_file(error: BaseException, urls: Sequence[str]) -> tuple[str, str] | None:
    """(url, cause) of the input file a Spark error says it could not read (Spark's reader
    or a task reading it itself, `READ_FAILED`), if it names one of `urls`."""
    text = str(error)
    own = _OWN_FAILURE.search(text)
    match = own or _FAILED_FILE.search(text)
    if match is None:
        return None
    named = _local(unquote(match.group(1)))
    url = next((u for u in urls if _local(unquote(u)) == named), None)
    if url is None:
        return None
    if own is not None:
        return url, own.group(2)
    causes = _CAUSE.findall(text)
    return url, (causes[-1].strip() if causes else "Spark could not read it")


def _local(url: str) -> str:
    """A file URL's path in one spelling (file:/x, file:///x and /x are the same file)."""
    if url.startswith("file:"):
        return "/" + url[len("file:") :].lstrip("/")
    return url


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def check_reject_share(
    aside: Mapping[str, SetAside], sizes: Mapping[str, tuple[int, str]], limit: float
) -> float:
    """The share of the input bytes set aside; past `limit` an error naming the files.

    Measured in bytes, not files: file sizes at corpus scale vary by orders of magnitude,
    and one large file set aside can be most of the text while being one file in many.
    """
    total = sum(size for size, _ in sizes.values())
    rejected = sum(sizes[url][0] for url in aside)
    share = rejected / total if total else float(bool(aside))
    if aside and share > limit:
        shown = "; ".join(f"{url}: {a.reason}" for url, a in list(aside.items())[:3])
        more = f"; and {len(aside) - 3} more" if len(aside) > 3 else ""
        raise CorpusError(
            f"{len(aside)} of {len(sizes)} input files set aside ({share:.2%} of the input "
            f"bytes, over corpus.max_reject_share = {limit:g}): {shown}{more}"
        )
    return share


def read_lines(
    spark: SparkSession,
    urls: Sequence[str],
    config: CorpusConfig,
    salvage: Sequence[str] = (),
) -> tuple[DataFrame, DataFrame | None]:
    """(lines, rejects): one row per line, record or sentence, and the records set aside.

    lines: text string (made valid UTF-8), repaired boolean (it held invalid UTF-8).
    rejects (JSON Lines and Parquet only): source, reason, record; a malformed JSON line or
    a record without the text field lands there instead of being dropped.
    `salvage`: damaged archives, read up to their damage (Spark's `ignoreCorruptFiles`,
    for these files only: a failure in any other file still fails the job).
    """
    parts = [
        _read_raw(spark.read.option("ignoreCorruptFiles", str(damaged).lower()), files, config)
        for files, damaged in ((list(urls), False), (list(salvage), True))
        if files
    ]
    if not parts:
        raise CorpusError("no input file is left to read")
    raw = reduce(DataFrame.unionByName, [r for r, _ in parts])
    record_rejects = [r for _, r in parts if r is not None]
    rejects = reduce(DataFrame.unionByName, record_rejects) if record_rejects else None
    lines = raw.select(
        F.make_valid_utf8("raw").alias(S.TEXT),
        (~F.is_valid_utf8("raw")).alias(S.REPAIRED),
    )
    if config.unit == "sentence":
        sentences = F.explode(F.split(S.TEXT, SENTENCE_BOUNDARY))
        lines = lines.select(sentences.alias(S.TEXT), S.REPAIRED)
    return lines, rejects


PARTITION_BYTES = 128 << 20  # input bytes a tokenize task takes at most (Spark's own split)


def task_count(cores: int, input_bytes: int) -> int:
    """Tokenize tasks for the input: one a core, or one per PARTITION_BYTES where more."""
    return max(cores, -(-input_bytes // PARTITION_BYTES))


def spread(lines: DataFrame, tasks: int, input_bytes: int) -> DataFrame:
    """`lines` in as many partitions as the cores (`tasks`), or one per PARTITION_BYTES of
    input where that is more, in their order.

    Spark reads a file it cannot split (a .gz) in one task, and packs small files a few
    dozen to a task (many more tasks than cores for thousands of them); every later stage
    inherits that partitioning. Too few: contiguous ranges of the input order (a range partition on
    each line's position, sorted within each range); too many: adjacent partitions merged
    (no shuffle). Either way the tokens table holds the lines in their input order.
    """
    parts = lines.rdd.getNumPartitions()
    wanted = task_count(tasks, input_bytes)
    if parts > wanted:
        return lines.coalesce(wanted)
    if parts >= tasks:
        return lines
    position = "_position"
    return (
        lines.withColumn(position, F.monotonically_increasing_id())
        .repartitionByRange(tasks, position)
        .sortWithinPartitions(position)
        .drop(position)
    )


def _read_raw(
    reader: Any, urls: list[str], config: CorpusConfig
) -> tuple[DataFrame, DataFrame | None]:
    """(raw text column, record rejects or None) of one group of files."""
    field = config.text_field
    if config.format == "text":
        return reader.text(urls).select(F.col("value").alias("raw")), None
    if config.format == "jsonl":
        parsed = (
            reader.schema(f"`{field}` string, _corrupt_record string")
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", "_corrupt_record")
            .json(urls)
            .select(
                F.col(field).alias("raw"), "_corrupt_record", F.input_file_name().alias(S.SOURCE)
            )
        )
        malformed = F.col("_corrupt_record").isNotNull()
        rejects = parsed.where(malformed | F.col("raw").isNull()).select(
            S.SOURCE,
            F.when(malformed, F.lit("malformed JSON"))
            .otherwise(F.lit(f"missing field {field!r}"))
            .alias(S.REASON),
            F.substring(F.coalesce("_corrupt_record", F.lit("")), 1, 1000).alias(S.RECORD),
        )
        return parsed.where(~malformed & F.col("raw").isNotNull()).select("raw"), rejects
    table = reader.parquet(*urls)
    if field not in table.columns:
        raise CorpusError(f"{', '.join(urls)}: no column {field!r} (columns: {table.columns})")
    parsed = table.select(
        F.col(field).cast("string").alias("raw"), F.input_file_name().alias(S.SOURCE)
    )
    rejects = parsed.where(F.col("raw").isNull()).select(
        S.SOURCE, F.lit(f"missing field {field!r}").alias(S.REASON), F.lit("").alias(S.RECORD)
    )
    return parsed.where(F.col("raw").isNotNull()).select("raw"), rejects
