"""Finding and checking the raw input before Spark reads it.

Errors here name the path: a missing input, a file that is not text. Listing runs
on the driver but holds only file names, never corpus content.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import fsspec
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from embedpipe import schemas as S
from embedpipe.config import CorpusConfig


class CorpusError(ValueError):
    """The input corpus cannot be used as it is; the message names the path."""


_SNIFF_BYTES = 8192
# Sentence ends: . ! ? and their CJK forms, followed by whitespace (or, for CJK, nothing).
SENTENCE_BOUNDARY = r"(?<=[.!?])\s+|(?<=[。！？])\s*"


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


def check_text_file(url: str) -> None:
    """Refuse a file that is not text: NUL bytes or mostly invalid UTF-8 in its first 8 KiB."""
    try:
        with fsspec.open(url, "rb", compression="infer") as f:
            head = f.read(_SNIFF_BYTES)
    except (OSError, EOFError) as e:
        raise CorpusError(f"cannot read {url}: {e}") from e
    if b"\x00" in head:
        raise CorpusError(f"{url} is not a text file (it holds NUL bytes)")
    text = head.decode("utf-8", errors="replace")
    if head and text.count("\ufffd") > 0.1 * len(text):
        raise CorpusError(f"{url} is not UTF-8 text (over 10% of its first bytes are invalid)")


def fingerprint_files(urls: Sequence[str]) -> str:
    """A fingerprint of input files by name, size and modification time (as Hadoop tools do)."""
    entries = []
    for url in urls:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        entries.append([url, info.get("size"), str(info.get("mtime") or info.get("LastModified"))])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def read_lines(
    spark: SparkSession, urls: Sequence[str], config: CorpusConfig
) -> tuple[DataFrame, DataFrame | None]:
    """(lines, rejects): one row per line, record or sentence, and the records set aside.

    lines: text string (made valid UTF-8), repaired boolean (it held invalid UTF-8).
    rejects (JSON Lines and Parquet only): source, reason, record; a malformed JSON line or
    a record without the text field lands there instead of being dropped.
    """
    field = config.text_field
    rejects = None
    if config.format == "text":
        raw = spark.read.text(list(urls)).select(F.col("value").alias("raw"))
    elif config.format == "jsonl":
        parsed = (
            spark.read.schema(f"`{field}` string, _corrupt_record string")
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", "_corrupt_record")
            .json(list(urls))
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
        raw = parsed.where(~malformed & F.col("raw").isNotNull()).select("raw")
    else:
        table = spark.read.parquet(*urls)
        if field not in table.columns:
            raise CorpusError(f"{', '.join(urls)}: no column {field!r} (columns: {table.columns})")
        parsed = table.select(
            F.col(field).cast("string").alias("raw"), F.input_file_name().alias(S.SOURCE)
        )
        rejects = parsed.where(F.col("raw").isNull()).select(
            S.SOURCE, F.lit(f"missing field {field!r}").alias(S.REASON), F.lit("").alias(S.RECORD)
        )
        raw = parsed.where(F.col("raw").isNotNull()).select("raw")
    lines = raw.select(
        F.make_valid_utf8("raw").alias(S.TEXT),
        (~F.is_valid_utf8("raw")).alias(S.REPAIRED),
    )
    if config.unit == "sentence":
        sentences = F.explode(F.split(S.TEXT, SENTENCE_BOUNDARY))
        lines = lines.select(sentences.alias(S.TEXT), S.REPAIRED)
    return lines, rejects


def find_unreadable(urls: Sequence[str]) -> tuple[str, str] | None:
    """The first file that cannot be read to its end (a truncated or corrupt archive), if any.

    Called only after Spark failed, to turn a task error into one that names the file.
    """
    for url in urls:
        try:
            with fsspec.open(url, "rb", compression="infer") as f:
                while f.read(1 << 24):
                    pass
        except Exception as e:  # noqa: BLE001 - any decoder error means the same thing here
            return url, f"{type(e).__name__}: {e}"
    return None
