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


def read_lines(spark: SparkSession, urls: Sequence[str], config: CorpusConfig) -> DataFrame:
    """One row per line (or record) with its text, made valid UTF-8, and whether it was repaired.

    Schema: text string, repaired boolean.
    """
    if config.format == "text":
        raw = spark.read.text(list(urls)).select(F.col("value").alias("raw"))
    elif config.format == "jsonl":
        raw = spark.read.schema(f"`{config.text_field}` string").json(list(urls))
        raw = raw.select(F.col(config.text_field).alias("raw"))
    else:
        raw = spark.read.parquet(*urls).select(F.col(config.text_field).cast("string").alias("raw"))
    raw = raw.where(F.col("raw").isNotNull())
    return raw.select(
        F.make_valid_utf8("raw").alias(S.TEXT),
        (~F.is_valid_utf8("raw")).alias(S.REPAIRED),
    )
