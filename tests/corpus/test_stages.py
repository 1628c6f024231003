"""The corpus stages on Spark against plain-Python references, reruns, and bad input."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedpipe import schemas as S
from embedpipe.config import load_config
from embedpipe.corpus.registry import STAGES
from embedpipe.corpus.sources import CorpusError
from embedpipe.corpus.stages import prepare
from embedpipe.text import tokenize_line
from embedpipe.workdir import Workdir

from .conftest import table_dir

pytestmark = pytest.mark.spark

WORDS = ["the", "cat", "Sat", "on", "mat", "dog", "ran", "fast", "東京", "naïve", "x1", "rare"]


def write_corpus(directory: Path, seed: int) -> list[bytes]:
    """Two files (plain and gzip) of random lines with punctuation, blanks and bad bytes."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    for _ in range(rng.randint(30, 80)):
        n = rng.choice([0, 1, 3, 6, 12])
        words = [WORDS[min(int(rng.expovariate(0.4)), len(WORDS) - 1)] for _ in range(n)]
        line = rng.choice([" ", ", ", "  ", "! "]).join(words).encode()
        if rng.random() < 0.1:
            line = line + b" bad\xff\xfebytes"
        lines.append(line)
    half = len(lines) // 2
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "a.txt").write_bytes(b"\n".join(lines[:half]) + b"\n")
    with gzip.open(directory / "b.txt.gz", "wb") as f:
        f.write(b"\n".join(lines[half:]) + b"\n")
    return lines


def reference(lines: list[bytes], min_count: int, window: int) -> dict:
    token_lists = [tokenize_line(line.decode("utf-8", errors="replace")) for line in lines]
    counts = Counter(t for tokens in token_lists for t in tokens)
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    vocab = [*S.SPECIAL_TOKENS, *kept]
    index = {t: i for i, t in enumerate(vocab)}
    sequences = [[index.get(t, S.UNK_ID) for t in tokens] for tokens in token_lists if tokens]
    cooc: Counter = Counter()
    for ids in sequences:
        for i in range(len(ids)):
            for j in range(i + 1, min(i + window + 1, len(ids))):
                if ids[i] >= len(S.SPECIAL_TOKENS) and ids[j] >= len(S.SPECIAL_TOKENS):
                    cooc[ids[i], ids[j]] += 1 / (j - i)
                    cooc[ids[j], ids[i]] += 1 / (j - i)
    return {
        "vocab": [(i, t, counts.get(t, 0)) for i, t in enumerate(vocab)],
        "sequences": sorted(sequences),
        "cooccur": cooc,
        "repaired": sum(b"\xff" in line for line in lines),
    }


def table_rows(path: Path) -> list[tuple]:
    """Every row of a table as a tuple (lists as tuples), sorted: its content, order aside."""
    rows = pq.read_table(path).to_pylist()
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in r.values()) for r in rows)


def config_for(tmp_path: Path, corpus: Path, **extra: object) -> object:
    overrides = [
        f"workdir={tmp_path / 'work'}",
        f'corpus.paths=["{corpus}"]',
        "vocab.min_count=2",
        "cooccur.window=3",
        "cooccur.num_shards=3",
        "bucket.num_buckets=3",
        *[f"{k}={json.dumps(v)}" for k, v in extra.items()],
    ]
    return load_config(None, overrides)


@pytest.mark.parametrize("seed", [0, 1])
def test_stages_match_reference(spark, tmp_path: Path, seed: int) -> None:
    lines = write_corpus(tmp_path / "corpus", seed)
    config = config_for(tmp_path, tmp_path / "corpus")
    manifests = prepare(spark, config)
    want = reference(lines, min_count=2, window=3)
    work = tmp_path / "work"

    vocab = pq.read_table(table_dir(work, "vocab"))
    assert [f.type for f in vocab.schema] == [f.type for f in S.VOCAB_SCHEMA]
    columns = [vocab.column(c).to_pylist() for c in (S.ID, S.TOKEN, S.COUNT)]
    assert list(zip(*columns, strict=True)) == want["vocab"]
    counts = np.array([c for _, _, c in want["vocab"]], dtype=np.float64)
    t = 1e-3 * counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.where(counts > 0, np.minimum(1.0, (np.sqrt(counts / t) + 1) * t / counts), 0.0)
    np.testing.assert_allclose(vocab.column(S.KEEP_PROB).to_numpy(), keep, rtol=1e-12)
    np.testing.assert_allclose(
        vocab.column(S.NOISE_PROB).to_numpy(), counts**0.75 / (counts**0.75).sum(), rtol=1e-12
    )

    sequences = pq.read_table(table_dir(work, "sequences"))
    assert sorted(sequences.column(S.IDS).to_pylist()) == want["sequences"]
    assert sequences.column(S.LENGTH).to_pylist() == [
        len(s) for s in sequences.column(S.IDS).to_pylist()
    ]

    cooc = pq.read_table(table_dir(work, "cooccur"))
    got = {
        (r, c): w
        for r, c, w in zip(
            *[cooc.column(k).to_pylist() for k in (S.ROW, S.COL, S.WEIGHT)], strict=False
        )
    }
    assert got.keys() == want["cooccur"].keys()
    assert all(abs(got[k] - v) <= 1e-5 * max(1.0, v) for k, v in want["cooccur"].items())

    counts = manifests["tokenize"]["counts"]
    assert counts["sequences"] == len(lines)
    assert counts["invalid_utf8_lines"] == want["repaired"]
    assert counts["empty_lines"] == sum(
        1 for line in lines if not tokenize_line(line.decode(errors="replace"))
    )
    assert manifests["encode"]["counts"]["sequences"] == len(want["sequences"])


def test_buckets_and_shards(spark, tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", 3)
    config = config_for(tmp_path, tmp_path / "corpus", **{"bucket.boundaries": [2, 5]})
    manifests = prepare(spark, config)
    work = tmp_path / "work"
    buckets = pq.read_table(table_dir(work, "buckets"))
    for length, bucket in zip(
        buckets.column(S.LENGTH).to_pylist(), buckets.column(S.BUCKET).to_pylist(), strict=True
    ):
        assert bucket == (0 if length <= 2 else 1 if length <= 5 else 2)
    stats = manifests["bucket"]["counts"]["buckets"]
    assert sum(b["sequences"] for b in stats) == buckets.num_rows
    for b in stats:
        assert b["padding_waste"] == pytest.approx(
            1 - b["tokens"] / (b["sequences"] * b["max_length"]), abs=1e-6
        )

    for shard_dir in sorted(table_dir(work, "cooccur").glob("shard=*")):
        shard = int(shard_dir.name.split("=")[1])
        for part in shard_dir.glob("*.parquet"):
            table = pq.read_table(part)
            keys = list(
                zip(table.column(S.ROW).to_pylist(), table.column(S.COL).to_pylist(), strict=False)
            )
            assert keys == sorted(keys), f"{part} is not sorted by (row, col)"
            assert all(r % 3 == shard for r, _ in keys)


def test_rerun_is_identical_and_skips(spark, tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", 5)
    first = prepare(spark, config_for(tmp_path, tmp_path / "corpus"))
    again = prepare(spark, config_for(tmp_path, tmp_path / "corpus"))
    assert all(m["skipped"] for m in again.values())
    assert {k: m["fingerprint"] for k, m in first.items()} == {
        k: m["fingerprint"] for k, m in again.items()
    }

    other = config_for(tmp_path / "second", tmp_path / "corpus")
    prepare(spark, other)
    for table in ("vocab", "sequences", "buckets", "cooccur"):
        assert table_rows(table_dir(tmp_path / "work", table)) == table_rows(
            table_dir(tmp_path / "second" / "work", table)
        )

    changed = prepare(spark, config_for(tmp_path, tmp_path / "corpus", **{"vocab.min_count": 3}))
    assert changed["tokenize"]["skipped"]
    assert not any(changed[s]["skipped"] for s in ("build_vocab", "encode", "bucket", "cooccur"))
    # Each table holds its manifest and the one run it names; the old runs are gone.
    for name, manifest in changed.items():
        table = STAGES[name].table
        entries = sorted(p.name for p in (tmp_path / "work" / table).iterdir())
        assert entries == sorted(["_MANIFEST.json", manifest["data"]]), (table, entries)


def test_missing_path_is_named(spark, tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match="nope.txt"):
        STAGES["tokenize"].run(spark, config_for(tmp_path, missing))


def test_binary_file_is_named(spark, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "ok.txt").write_text("fine words here\n")
    (corpus / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(CorpusError, match="image.png: not text"):
        STAGES["tokenize"].run(spark, config_for(tmp_path, corpus))


def test_empty_corpus_fails_and_leaves_nothing(spark, tmp_path: Path) -> None:
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n ... \n!!!\n\n")
    with pytest.raises(CorpusError, match="empty.txt holds no tokens"):
        STAGES["tokenize"].run(spark, config_for(tmp_path, corpus))
    work = tmp_path / "work"
    assert Workdir(str(work)).read_manifest("tokens") is None
    assert not (work / "tokens").exists() and not list(work.glob("tokens.*"))
    assert list((work / ".staging").iterdir()) == []  # the stage's lock is gone


def test_jsonl_rejects_are_set_aside_and_counted(spark, tmp_path: Path) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        '{"body": "the cat sat"}\n'
        "{not json at all\n"
        '{"title": "no body here"}\n'
        '{"body": "the dog ran. the cat sat!"}\n'
    )
    config = config_for(
        tmp_path,
        corpus,
        **{"corpus.format": "jsonl", "corpus.text_field": "body", "corpus.unit": "sentence"},
    )
    manifest = STAGES["tokenize"].run(spark, config)
    tokens = pq.read_table(table_dir(tmp_path / "work", "tokens"))
    assert sorted(tokens.column(S.TOKENS).to_pylist()) == [["the", "cat", "sat"]] * 2 + [
        ["the", "dog", "ran"]
    ]
    rejects = pq.read_table(table_dir(tmp_path / "work", "tokens", "rejects")).to_pylist()
    assert sorted(r[S.REASON] for r in rejects) == ["malformed JSON", "missing field 'body'"]
    assert all(r[S.SOURCE].endswith("docs.jsonl") for r in rejects)
    assert any("not json" in r[S.RECORD] for r in rejects)
    assert manifest["counts"]["rejected_records"] == 2


def test_long_lines_are_split_not_lost(spark, tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(400)]
    corpus = tmp_path / "long.txt"
    corpus.write_text("short line\n" + " ".join(words) + "\n")
    config = config_for(tmp_path, corpus, **{"tokenize.max_line_chars": 100})
    manifest = STAGES["tokenize"].run(spark, config)
    table = pq.read_table(table_dir(tmp_path / "work", "tokens")).sort_by(S.SEQ_ID)
    pieces = [
        t
        for t, split in zip(
            table.column(S.TOKENS).to_pylist(), table.column(S.SPLIT).to_pylist(), strict=True
        )
        if split
    ]
    assert [w for piece in pieces for w in piece] == words
    assert manifest["counts"]["split_pieces"] == len(pieces) > 1


def test_truncated_archive_is_named(spark, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    data = gzip.compress(("the cat sat on the mat\n" * 5000).encode())
    (corpus / "cut.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match="cut.txt.gz: truncated or corrupt"):
        STAGES["tokenize"].run(spark, config_for(tmp_path, corpus))
    assert not (tmp_path / "work" / "tokens").exists()


def test_sentencepiece_tokens_and_model(spark, tmp_path: Path) -> None:
    lines = write_corpus(tmp_path / "corpus", 7)
    config = config_for(
        tmp_path,
        tmp_path / "corpus",
        **{"tokenize.kind": "sentencepiece", "tokenize.sp_vocab_size": 40, "vocab.min_count": 1},
    )
    prepare(spark, config)
    model = Path(Workdir(str(tmp_path / "work")).tokenizer_model).read_bytes()

    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=model)
    texts = sorted(
        line.decode("utf-8", errors="replace").lower() for line in lines
    )  # normalised the same way (NFKC changes nothing in this corpus)
    want = sorted(processor.encode(texts, out_type=str))
    got = sorted(pq.read_table(table_dir(tmp_path / "work", "tokens")).column(S.TOKENS).to_pylist())
    assert got == want
    vocab = pq.read_table(table_dir(tmp_path / "work", "vocab")).column(S.TOKEN).to_pylist()
    assert set(vocab[len(S.SPECIAL_TOKENS) :]) == {p for pieces in want for p in pieces}


def test_every_work_table_reads_as_one_schema_through_a_duckdb_glob(spark, tmp_path: Path) -> None:
    """`<table>/**/*.parquet` is what DuckDB, Polars and Spark users write: each table and
    each side table (`<table>.<side>/`) must read back whole, with its own columns only."""
    duckdb = pytest.importorskip("duckdb")
    write_corpus(tmp_path / "corpus", 3)
    prepare(spark, config_for(tmp_path, tmp_path / "corpus"))
    work = tmp_path / "work"
    directories = sorted(
        p.name for p in work.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    tables = set(STAGES[s].table for s in STAGES)
    assert tables <= set(directories) and any("." in d for d in directories)
    for name in directories:
        table, _, side = name.partition(".")
        committed = pq.read_table(table_dir(work, table, side or None))
        glob = f"read_parquet('{work / name}/**/*.parquet')"
        read = duckdb.sql(f"SELECT * FROM {glob}").fetch_arrow_table()
        assert read.column_names == committed.column_names, name
        assert read.num_rows == committed.num_rows > 0, name
