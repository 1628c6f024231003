"""The five corpus stages as whole steps: read the upstream table, transform, write, count.

`jobs/<stage>.py` (spark-submit) and the Prefect flow (in-process session) both call these,
so a stage runs the same way everywhere; only the session differs.
"""

from __future__ import annotations

from typing import Any

import fsspec
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from embedpipe import schemas as S
from embedpipe.config import RunConfig
from embedpipe.corpus.bucket import assign_buckets, bucket_stats, derive_boundaries
from embedpipe.corpus.cooccur import cooccur
from embedpipe.corpus.encode import encode
from embedpipe.corpus.sources import (
    CorpusError,
    check_text_file,
    find_unreadable,
    fingerprint_files,
    list_input_files,
    read_lines,
)
from embedpipe.corpus.stage import Workdir, run_stage
from embedpipe.corpus.tokenize import sample_text, tokenize
from embedpipe.corpus.vocab import build_vocab, count_tokens
from embedpipe.text.sentencepiece import MODEL_FILE as SP_MODEL_FILE
from embedpipe.text.sentencepiece import train_sentencepiece

REJECTS = "_rejects"  # tokens/_rejects/: hidden from readers of tokens/ (leading underscore)

# Stage name -> the table it writes, in pipeline order.
TABLES = {
    "tokenize": "tokens",
    "build_vocab": "vocab",
    "encode": "sequences",
    "bucket": "buckets",
    "cooccur": "cooccur",
}


def tokenize_stage(spark: SparkSession, config: RunConfig) -> dict[str, Any]:
    """Raw text -> tokens/ (rejected records in tokens/_rejects/).

    Refuses missing paths, non-text files, unreadable archives and a corpus with no tokens,
    naming the path.
    """
    files = list_input_files(config.corpus.paths)
    if config.corpus.format == "text":
        for url in files:
            check_text_file(url)
    inputs = {"files": len(files), "fingerprint": fingerprint_files(files)}

    def write(out: str) -> dict[str, Any]:
        lines, rejects = read_lines(spark, files, config.corpus)
        sp_model = None
        if config.tokenize.kind == "sentencepiece":
            sp_model = train_sentencepiece(sample_text(lines, config.tokenize), config.tokenize)
        try:
            tokenize(lines, config.tokenize, sp_model).write.parquet(out)
        except Exception as e:
            bad = find_unreadable(files) if "Py4J" in type(e).__name__ else None
            if bad:
                raise CorpusError(f"{bad[0]} is truncated or corrupt ({bad[1]})") from e
            raise
        if sp_model is not None:
            with fsspec.open(f"{out}/{SP_MODEL_FILE}", "wb") as f:
                f.write(sp_model)
        rejected = 0
        if rejects is not None:
            rejects.write.parquet(f"{out}/{REJECTS}")
            rejected = spark.read.parquet(f"{out}/{REJECTS}").count()
        row = (
            spark.read.parquet(out)
            .agg(
                F.count(F.lit(1)).alias("sequences"),
                F.coalesce(F.sum(S.N_TOKENS), F.lit(0)).alias("tokens"),
                F.count_if(F.col(S.REPAIRED)).alias("invalid_utf8_lines"),
                F.count_if(F.col(S.SPLIT)).alias("split_pieces"),
                F.count_if(F.col(S.N_TOKENS) == 0).alias("empty_lines"),
            )
            .first()
        )
        if row["tokens"] == 0:
            raise CorpusError(f"corpus {', '.join(config.corpus.paths)} holds no tokens")
        return {**row.asDict(), "rejected_records": rejected}

    cfg = {"corpus": config.corpus, "tokenize": config.tokenize}
    return run_stage(Workdir(config.workdir), "tokens", cfg, inputs, write)


def build_vocab_stage(spark: SparkSession, config: RunConfig) -> dict[str, Any]:
    """tokens/ -> vocab/ (one Parquet file, sorted by id)."""
    wd = Workdir(config.workdir)
    upstream = wd.require("tokens")

    def write(out: str) -> dict[str, Any]:
        counts = count_tokens(spark.read.parquet(wd.path("tokens"))).persist()
        try:
            build_vocab(counts, config.vocab).write.parquet(out)
            distinct = counts.count()
        finally:
            counts.unpersist()
        vocab = spark.read.parquet(out)
        covered = vocab.agg(F.sum(S.COUNT)).first()[0] or 0
        size = vocab.count()
        total = upstream["counts"]["tokens"]
        return {
            "distinct_tokens": distinct,
            "vocab_size": size,
            "words": size - len(S.SPECIAL_TOKENS),
            "tokens": total,
            "covered_tokens": covered,
            "oov_tokens": total - covered,
        }

    inputs = {"tokens": upstream["fingerprint"]}
    return run_stage(wd, "vocab", config.vocab, inputs, write)


def read_vocab_tokens(spark: SparkSession, workdir: Workdir) -> list[str]:
    """The vocabulary's tokens by id (model-sized, so it may live on the driver)."""
    rows = spark.read.parquet(workdir.path("vocab")).orderBy(S.ID).select(S.TOKEN).collect()
    return [r[0] for r in rows]


def encode_stage(spark: SparkSession, config: RunConfig) -> dict[str, Any]:
    """tokens/ + vocab/ -> sequences/."""
    wd = Workdir(config.workdir)
    tokens_manifest, vocab_manifest = wd.require("tokens"), wd.require("vocab")

    def write(out: str) -> dict[str, Any]:
        vocab = read_vocab_tokens(spark, wd)
        encode(spark.read.parquet(wd.path("tokens")), vocab, config.encode).write.parquet(out)
        row = (
            spark.read.parquet(out)
            .agg(
                F.count(F.lit(1)).alias("sequences"),
                F.coalesce(F.sum(S.LENGTH), F.lit(0)).alias("tokens"),
                F.coalesce(F.sum(F.size(F.filter(S.IDS, lambda x: x == S.UNK_ID))), F.lit(0)).alias(
                    "unk_tokens"
                ),
                F.max(S.LENGTH).alias("max_length"),
            )
            .first()
            .asDict()
        )
        row["dropped_empty_sequences"] = tokens_manifest["counts"]["sequences"] - row["sequences"]
        row["dropped_oov_tokens"] = tokens_manifest["counts"]["tokens"] - row["tokens"]
        return row

    inputs = {"tokens": tokens_manifest["fingerprint"], "vocab": vocab_manifest["fingerprint"]}
    return run_stage(wd, "sequences", config.encode, inputs, write)


def bucket_stage(spark: SparkSession, config: RunConfig) -> dict[str, Any]:
    """sequences/ -> buckets/ partitioned by `bucket`, with padding waste per bucket."""
    wd = Workdir(config.workdir)
    upstream = wd.require("sequences")

    def write(out: str) -> dict[str, Any]:
        sequences = spark.read.parquet(wd.path("sequences"))
        boundaries = list(config.bucket.boundaries or []) or derive_boundaries(
            sequences, config.bucket.num_buckets
        )
        assign_buckets(sequences, boundaries).write.partitionBy(S.BUCKET).parquet(out)
        return {"boundaries": boundaries, "buckets": bucket_stats(spark.read.parquet(out))}

    inputs = {"sequences": upstream["fingerprint"]}
    return run_stage(wd, "buckets", config.bucket, inputs, write)


def cooccur_stage(spark: SparkSession, config: RunConfig) -> dict[str, Any]:
    """sequences/ -> cooccur/ partitioned by `shard` (row % shards), sorted within each shard."""
    wd = Workdir(config.workdir)
    upstream, vocab_manifest = wd.require("sequences"), wd.require("vocab")
    vocab_size = vocab_manifest["counts"]["vocab_size"]

    def write(out: str) -> dict[str, Any]:
        matrix = cooccur(spark.read.parquet(wd.path("sequences")), config.cooccur)
        matrix.write.partitionBy(S.SHARD).parquet(out)
        rows = (
            spark.read.parquet(out)
            .groupBy(S.SHARD)
            .agg(F.count(F.lit(1)).alias("entries"), F.sum(S.WEIGHT).alias("weight"))
        )
        shards = sorted((r.asDict() for r in rows.collect()), key=lambda r: r[S.SHARD])
        return {
            "entries": sum(s["entries"] for s in shards),
            "vocab_size": vocab_size,
            "shards": shards,
        }

    inputs = {"sequences": upstream["fingerprint"], "vocab": vocab_manifest["fingerprint"]}
    return run_stage(wd, "cooccur", config.cooccur, inputs, write)


STAGE_FUNCTIONS = {
    "tokenize": tokenize_stage,
    "build_vocab": build_vocab_stage,
    "encode": encode_stage,
    "bucket": bucket_stage,
    "cooccur": cooccur_stage,
}


def prepare(spark: SparkSession, config: RunConfig) -> dict[str, dict[str, Any]]:
    """Run every corpus stage in order; returns each stage's manifest."""
    return {name: fn(spark, config) for name, fn in STAGE_FUNCTIONS.items()}
