"""The five corpus stages as whole steps: read the upstream tables, transform, write, count.

Each `<name>_stage(spark, config)` is what `registry.STAGES[name]` names: the spark-submit
job (`corpus.spark.job`), `embedpipe prepare` and the Prefect flow all run a stage through
the registry, so it runs the same way everywhere; only the session differs. The transforms
live in one module per stage (`tokenize`, `vocab`, `encode`, `bucket`, `cooccur`); the
commit (run directory, manifest, skip when unchanged) in `spark.commit`; every table is
read at `Workdir.table_path`, the run its manifest names.
"""

from __future__ import annotations

from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession

from embedpipe import schemas as S
from embedpipe.config import RunConfig
from embedpipe.corpus.bucket import derive_boundaries, write_buckets
from embedpipe.corpus.cooccur import write_cooccur
from embedpipe.corpus.encode import write_sequences
from embedpipe.corpus.registry import STAGES
from embedpipe.corpus.sources import (
    SILENT_CODECS,
    CorpusError,
    SetAside,
    check_reject_share,
    failed_file,
    file_sizes,
    find_damaged,
    fingerprint_files,
    list_input_files,
    read_lines,
    sniff_files,
    spread,
    task_count,
)
from embedpipe.corpus.spark.commit import run_stage
from embedpipe.corpus.spark.parts import write_dataframe
from embedpipe.corpus.textfiles import read_lines_itself, reads_itself
from embedpipe.corpus.tokenize import sample_text, write_tokens
from embedpipe.corpus.vocab import COUNTS, write_vocab
from embedpipe.text.sentencepiece import MODEL_FILE as SP_MODEL_FILE
from embedpipe.text.sentencepiece import train_sentencepiece
from embedpipe.workdir import Workdir, side_output

REJECTS = "_rejects"  # the side table tokens.rejects/ (workdir.side_output), beside tokens/


def tokenize_stage(spark: SparkSession, config: RunConfig) -> dict[str, Any]:
    """Raw text -> tokens/ (records and files set aside in the side table tokens.rejects/).

    Refuses missing paths and a corpus with no tokens, naming the path. A file that cannot
    be read as it is (binary, UTF-16, a damaged archive: `sources`) is set aside, named in
    `tokens.rejects/` (source, reason, record "") and counted, and the run goes on, unless the
    files set aside hold more than `corpus.max_reject_share` of the input bytes: then it
    fails naming them.
    """
    files = list_input_files(config.corpus.paths)
    sizes = file_sizes(files)
    inputs = {"files": len(files), "fingerprint": fingerprint_files(sizes)}
    limit = config.corpus.max_reject_share

    def write(out: str) -> dict[str, Any]:
        aside = sniff_files(files, config.corpus.format)
        if config.corpus.format != "parquet":  # damage Spark would read past quietly
            readable = [f for f in files if f not in aside]
            for url, error in find_damaged(spark, readable, SILENT_CODECS).items():
                aside[url] = SetAside(f"truncated or corrupt ({error})", salvage=True)
        while True:  # each pass sets aside at least one more file, or returns, or raises
            share = check_reject_share(aside, sizes, limit)
            try:
                counts = tokenize_files(spark, config, files, aside, out, sizes)
                break
            except Exception as e:  # noqa: BLE001 - re-raised unless a file is to blame
                failed = failed_file(e, files)
                if failed is None:
                    raise
                url, cause = failed
                if url in aside:  # even read up to its damage, Spark fails on it
                    raise CorpusError(f"{url} cannot be read ({cause})") from e
                readable = [f for f in files if f not in aside]
                damaged = {url: cause, **find_damaged(spark, readable)}
                for bad, error in damaged.items():
                    aside[bad] = SetAside(f"truncated or corrupt ({error})", salvage=True)
                _remove(out)
        counts["rejected_files"] = len(aside)
        counts["rejected_bytes"] = sum(sizes[url][0] for url in aside)
        counts["input_bytes"] = sum(size for size, _ in sizes.values())
        counts["rejected_share"] = round(share, 6)
        return counts

    return run_stage(STAGES["tokenize"], config, write, inputs)


def tokenize_files(
    spark: SparkSession,
    config: RunConfig,
    files: list[str],
    aside: dict[str, SetAside],
    out: str,
    sizes: dict[str, tuple[int, str]],
) -> dict[str, Any]:
    """One attempt of the tokenize stage on the files not set aside (and what decodes of
    the damaged ones): the tokens table, its rejects and counts, at `out`."""
    readable = [f for f in files if f not in aside]
    salvage = [f for f, a in aside.items() if a.salvage]
    if not readable and not salvage:
        raise CorpusError(f"corpus {', '.join(config.corpus.paths)}: every file was set aside")
    lines, read_itself, rejects, sp_model = line_input(spark, config, readable, salvage, sizes)
    counts: dict[str, Any] = write_tokens(
        lines, config.tokenize, out, sp_model, side_output(out, COUNTS), read_itself
    )
    if counts["tokens"] == 0:
        raise CorpusError(f"corpus {', '.join(config.corpus.paths)} holds no tokens")
    if sp_model is not None:
        with fsspec.open(f"{out}/{SP_MODEL_FILE}", "wb") as f:
            f.write(sp_model)
    counts["salvaged_sequences"] = (
        read_lines(spark, [], config.corpus, salvage)[0].count() if salvage else 0
    )
    if aside:  # one row per file set aside, beside the records set aside
        set_aside = spark.createDataFrame(
            [(url, a.reason, "") for url, a in aside.items()], S.spark_ddl(S.REJECTS_SCHEMA)
        )
        rejects = set_aside if rejects is None else rejects.unionByName(set_aside)
    rows = (
        write_dataframe(rejects, side_output(out, REJECTS), S.REJECTS_SCHEMA)
        if rejects is not None
        else 0
    )
    counts["rejected_records"] = rows - len(aside)
    return counts


def line_input(
    spark: SparkSession,
    config: RunConfig,
    readable: list[str],
    salvage: list[str],
    sizes: dict[str, tuple[int, str]],
) -> tuple[DataFrame, Any, DataFrame | None, bytes | None]:
    """(what the tokenize job maps over, how its tasks read their lines or None for
    Spark's lines, the records set aside, the SentencePiece model or None).

    Plain text files are read by the tasks themselves (`textfiles`); archives, JSON
    Lines, Parquet and sentences are Spark's lines. SentencePiece learns from a sample of
    Spark's lines either way.
    """
    cores = spark.sparkContext.defaultParallelism
    read_bytes = sum(sizes[url][0] for url in [*readable, *salvage])
    itself = reads_itself(readable, config.corpus, salvage)
    spark_lines, rejects, sp_model = None, None, None
    if not itself or config.tokenize.kind == "sentencepiece":
        spark_lines, rejects = read_lines(spark, readable, config.corpus, salvage)
        spark_lines = spread(spark_lines, cores, read_bytes)
    if config.tokenize.kind == "sentencepiece":
        sample = sample_text(spark_lines, config.tokenize)
        sp_model = train_sentencepiece(sample, config.tokenize)
    if not itself:
        return spark_lines, None, rejects, sp_model
    plain = {url: sizes[url][0] for url in readable}
    frame, read = read_lines_itself(spark, plain, task_count(cores, read_bytes))
    return frame, read, rejects, sp_model


def _remove(url: str) -> None:
    """Remove what a failed attempt left at `url` (its part files are named by partition,
    and the next attempt may have fewer partitions)."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def build_vocab_stage(spark: SparkSession, config: RunConfig) -> dict[str, Any]:
    """tokens/ -> vocab/ (one Parquet file, sorted by id).

    Sums the tokenize tasks' partial counts (tokens.counts/) when they are there, else
    counts the tokens table (see `vocab.write_vocab`).
    """
    wd = Workdir(config.workdir)
    upstream = wd.require("tokens")

    def write(out: str) -> dict[str, Any]:
        tokens = wd.table_path("tokens", manifest=upstream)
        counts_url = wd.table_path("tokens", COUNTS, upstream)
        counts = write_vocab(spark, tokens, config.vocab, out, counts_url)
        size, covered = counts["vocab_size"], counts["covered_tokens"]
        if size == len(S.SPECIAL_TOKENS):
            raise CorpusError(
                f"no token occurs vocab.min_count={config.vocab.min_count} times: empty vocabulary"
            )
        total = upstream["counts"]["tokens"]
        return {
            "distinct_tokens": counts["distinct_tokens"],
            "vocab_size": size,
            "words": size - len(S.SPECIAL_TOKENS),
            "tokens": total,
            "covered_tokens": covered,
            "oov_tokens": total - covered,
        }

    return run_stage(STAGES["build_vocab"], config, write)


def read_table(spark: SparkSession, path: str, schema: pa.Schema) -> DataFrame:
    """A table of the workdir with its known schema (no job to infer it from the files)."""
    return spark.read.schema(S.spark_ddl(schema)).parquet(path)


def read_vocab_column(workdir: Workdir, column: str) -> pa.Array:
    """One column of the vocabulary by id (model-sized: read on the driver, no Spark job)."""
    url = workdir.table_path("vocab")
    fs, path = fsspec.core.url_to_fs(url)
    table = pq.read_table(path, columns=[S.ID, column], filesystem=fs).sort_by(S.ID)
    ids = table.column(S.ID).to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{url}: ids are not 0..{len(ids) - 1}")
    return table.column(column).combine_chunks()


def encode_stage(spark: SparkSession, config: RunConfig) -> dict[str, Any]:
    """tokens/ + vocab/ -> sequences/."""
    wd = Workdir(config.workdir)
    tokens_manifest = wd.require("tokens")

    def write(out: str) -> dict[str, Any]:
        vocab = read_vocab_column(wd, S.TOKEN).to_pylist()
        tokens = wd.table_path("tokens", manifest=tokens_manifest)
        row = write_sequences(spark, tokens, vocab, config.encode, out)
        row["dropped_empty_sequences"] = tokens_manifest["counts"]["sequences"] - row["sequences"]
        row["dropped_oov_tokens"] = tokens_manifest["counts"]["tokens"] - row["tokens"]
        return row

    return run_stage(STAGES["encode"], config, write)


def bucket_stage(spark: SparkSession, config: RunConfig) -> dict[str, Any]:
    """sequences/ -> buckets/ partitioned by `bucket`, with padding waste per bucket."""
    wd = Workdir(config.workdir)

    def write(out: str) -> dict[str, Any]:
        url = wd.table_path("sequences")
        sequences = read_table(spark, url, S.SEQUENCES_SCHEMA)
        boundaries = list(config.bucket.boundaries or []) or derive_boundaries(
            sequences, config.bucket.num_buckets
        )
        buckets = write_buckets(spark, url, boundaries, out)
        return {"boundaries": boundaries, "buckets": buckets}

    return run_stage(STAGES["bucket"], config, write)


def cooccur_stage(spark: SparkSession, config: RunConfig) -> dict[str, Any]:
    """sequences/ -> cooccur/ partitioned by `shard` (row % shards), sorted within each shard."""
    wd = Workdir(config.workdir)
    vocab_size = wd.require("vocab")["counts"]["vocab_size"]

    def write(out: str) -> dict[str, Any]:
        counts = read_vocab_column(wd, S.COUNT).to_numpy()
        sequences = wd.table_path("sequences")
        files = write_cooccur(spark, sequences, config.cooccur, counts, out)
        shards = []
        for shard in range(config.cooccur.num_shards):
            mine = [f for f in files if f[S.SHARD] == shard]
            shards.append(
                {
                    S.SHARD: shard,
                    "entries": sum(f["entries"] for f in mine),
                    "weight": sum(f["weight_sum"] for f in mine),
                    "files": sum(1 for f in mine if f["entries"]),
                }
            )
        return {
            "entries": sum(s["entries"] for s in shards),
            "vocab_size": vocab_size,
            "shards": shards,
        }

    return run_stage(STAGES["cooccur"], config, write)


def prepare(spark: SparkSession, config: RunConfig) -> dict[str, dict[str, Any]]:
    """Run every corpus stage in order in `spark`'s session; returns each stage's manifest."""
    return {name: stage.run(spark, config) for name, stage in STAGES.items()}
