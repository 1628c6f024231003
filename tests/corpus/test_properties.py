"""Property-based tests of every corpus stage against plain-Python references (hypothesis).

Two levels per stage: its Arrow/numpy kernel, called directly on many examples, and the
real Spark stage (the session fixture) on a few, since every example there costs Spark
jobs. Inputs mix scripts (Latin, Greek, Cyrillic, CJK, Hangul, Arabic, Devanagari, emoji),
empty lines, invalid UTF-8, NUL and other control characters, CR/LF line ends, over-long
lines and, for JSON Lines, malformed records and missing fields.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from embedpipe import schemas as S
from embedpipe.config import (
    CooccurConfig,
    EncodeConfig,
    TokenizeConfig,
    VocabConfig,
    load_config,
)
from embedpipe.corpus.bucket import bucket_of, write_buckets
from embedpipe.corpus.cooccur import count_pairs, write_cooccur
from embedpipe.corpus.encode import encode_arrow, write_sequences
from embedpipe.corpus.registry import STAGES
from embedpipe.corpus.sources import CorpusError
from embedpipe.corpus.tokenize import tokenize_batch
from embedpipe.corpus.vocab import (
    TokenCounter,
    rank_words,
    sampling_columns,
    token_buckets,
    write_vocab,
)
from embedpipe.text import tokenize_line
from embedpipe.text.tokenizer import split_long_line
from embedpipe.workdir import Workdir

N_SPECIAL = len(S.SPECIAL_TOKENS)
# Spark examples cost seconds each: few of them, and no shrinking (a failure reports the
# example as generated).
SPARK = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
KERNEL = settings(max_examples=150, deadline=None)

# ---------------------------------------------------------------- inputs

WORDS = ["the", "Cat", "naïve", "ΣΟΦΙΑ", "жизнь", "東京", "日本語は", "한국어", "مرحبا", "नमस्ते"]
WORDS += ["x1", "42", "ﬁne", "Ｆｕｌｌ", "😀", "don't", "e\u0301"]
SEPARATORS = [" ", "  ", ", ", "\t", ". ", "!", "\x07", "\x1b", "\x7f", "\u00a0", "\u3000"]
BAD_BYTES = [b"\xff", b"\xc3", b"\xe6\x9d", b"\x80\x80", b"\xf0\x9f\x98"]  # invalid UTF-8


@st.composite
def text_lines(draw: st.DrawFn, long: bool = True) -> list[bytes]:
    """Lines as bytes: words and separators, some invalid UTF-8, some empty or over-long."""
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        parts = draw(
            st.lists(
                st.one_of(
                    st.sampled_from(WORDS).map(str.encode),
                    st.sampled_from(SEPARATORS).map(str.encode),
                    st.sampled_from(BAD_BYTES),
                ),
                max_size=12,
            )
        )
        if long and draw(st.booleans()) and draw(st.booleans()):
            parts = parts * draw(st.integers(4, 10))  # likely over the limit
        lines.append(b"".join(parts))
    return lines


def decode(raw: bytes) -> tuple[str, bool]:
    """(text, repaired): invalid UTF-8 replaced by U+FFFD, and whether any was."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def reference_tokens(texts: list[tuple[str, bool]], limit: int) -> list[tuple]:
    """(tokens, n_tokens, repaired, split) per sequence: lines over the limit are cut."""
    rows = []
    for text, repaired in texts:
        long = len(text) > limit
        for piece in split_long_line(text, limit) if long else [text]:
            tokens = tokenize_line(piece)
            rows.append((tokens, len(tokens), repaired, long))
    return rows


def reference_vocab(token_lists: list[list[str]], config: VocabConfig) -> list[tuple]:
    """(id, token, count, keep_prob, noise_prob) rows, as word2vec defines them."""
    counts = Counter(t for tokens in token_lists for t in tokens)
    kept = sorted(
        (t for t, c in counts.items() if c >= config.min_count), key=lambda t: (-counts[t], t)
    )
    kept = kept[: config.max_size] if config.max_size is not None else kept
    rows = [(i, t, 0) for i, t in enumerate(S.SPECIAL_TOKENS)]
    rows += [(N_SPECIAL + i, t, counts[t]) for i, t in enumerate(kept)]
    total = sum(c for _, _, c in rows)
    noise_total = sum(c**config.noise_power for _, _, c in rows)
    out = []
    for i, t, c in rows:
        if c == 0:
            keep = 0.0
        elif config.sample == 0:
            keep = 1.0
        else:
            threshold = config.sample * total
            keep = min(1.0, (math.sqrt(c / threshold) + 1) * threshold / c)
        out.append((i, t, c, keep, c**config.noise_power / noise_total if noise_total else 0.0))
    return out


def reference_cooccur(
    sequences: list[list[int]], window: int, min_weight: float = 0.0
) -> dict[tuple[int, int], float]:
    """Exact sums of 1/distance, both directions, special ids skipped, as float32 values."""
    sums: dict[tuple[int, int], Fraction] = {}
    for ids in sequences:
        for i, left in enumerate(ids):
            for j in range(i + 1, min(i + window + 1, len(ids))):
                right = ids[j]
                if left >= N_SPECIAL and right >= N_SPECIAL:
                    for key in ((left, right), (right, left)):
                        sums[key] = sums.get(key, Fraction(0)) + Fraction(1, j - i)
    return {k: float(np.float32(float(v))) for k, v in sums.items() if float(v) >= min_weight}


def read_rows(path: Path) -> pa.Table:
    return ds.dataset(path, format="parquet", partitioning="hive").to_table()


def write_parts(directory: Path, table: pa.Table, parts: int) -> str:
    """An upstream table as `parts` part files (the last ones may be empty of rows)."""
    directory.mkdir(parents=True)
    size = -(-table.num_rows // parts) if table.num_rows else 0
    for i in range(parts):
        pq.write_table(table.slice(i * size, size), directory / f"part-{i:05d}.parquet")
    return str(directory)


# ---------------------------------------------------------------- tokenize


@KERNEL
@given(text_lines(), st.integers(16, 60))
def test_tokenize_kernel(lines: list[bytes], limit: int) -> None:
    texts = [decode(line) for line in lines]
    batch = pa.RecordBatch.from_arrays(
        [pa.array([t for t, _ in texts], pa.string()), pa.array([r for _, r in texts])],
        names=[S.TEXT, S.REPAIRED],
    )
    out = tokenize_batch(batch, TokenizeConfig(max_line_chars=limit))
    got = list(zip(*[out.column(c).to_pylist() for c in out.schema.names], strict=True))
    assert got == reference_tokens(texts, limit)


@pytest.mark.spark
@SPARK
@given(text_lines(), st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.integers(16, 40))
def test_tokenize_stage_on_text(
    spark, lines: list[bytes], newline: bytes, final_newline: bool, limit: int
) -> None:
    """Plain text: lines end at LF or CRLF; invalid UTF-8 is repaired and counted, NUL and
    control characters replaced and counted (a file whose first 8 KiB are over 10% invalid
    UTF-8 or control characters is set aside: alone in the corpus, past the reject share,
    the stage fails naming it)."""
    lines = [b"the cat sat"] * 30 + lines  # text enough that most examples are accepted
    data = newline.join(lines) + (newline if final_newline else b"")
    lines = re.split(rb"\r\n|\n", data)
    if data.endswith(b"\n"):
        lines = lines[:-1]
    # The stage replaces NUL and control characters by spaces before it cuts long lines.
    controls = str.maketrans(dict.fromkeys([*range(9), *range(14, 32), 127], " "))
    want = reference_tokens(
        [(text.translate(controls), repaired) for text, repaired in map(decode, lines)], limit
    )
    head = data[:8192].decode("utf-8", errors="replace")
    n_controls = sum(1 for ch in data[:8192] if ch < 9 or 14 <= ch < 32 or ch == 127)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_bytes(data)
        config = load_config(
            None,
            [
                f"workdir={tmp}/work",
                f'corpus.paths=["{corpus}"]',
                f"tokenize.max_line_chars={limit}",
            ],
        )
        if head.count("\ufffd") + n_controls > 0.1 * len(head):
            with pytest.raises(CorpusError, match=r"corpus.txt: not (UTF-8 )?text"):
                STAGES["tokenize"].run(spark, config)
            return
        manifest = STAGES["tokenize"].run(spark, config)
        table = pq.read_table(Workdir(f"{tmp}/work").table_path("tokens")).sort_by(S.SEQ_ID)
    columns = [S.TOKENS, S.N_TOKENS, S.REPAIRED, S.SPLIT]
    assert list(zip(*[table.column(c).to_pylist() for c in columns], strict=True)) == want
    assert len(set(table.column(S.SEQ_ID).to_pylist())) == len(want)
    counts = manifest["counts"]
    assert counts["sequences"] == len(want)
    assert counts["tokens"] == sum(n for _, n, _, _ in want)
    assert counts["invalid_utf8_lines"] == sum(1 for line in lines if decode(line)[1])
    assert counts["control_char_lines"] == sum(
        1 for line in lines if any(ch < 9 or 14 <= ch < 32 or ch == 127 for ch in line)
    )
    assert counts["split_pieces"] == sum(1 for _, _, _, split in want if split)
    assert counts["empty_lines"] == sum(1 for _, n, _, _ in want if n == 0)


@st.composite
def json_records(draw: st.DrawFn) -> list[str]:
    """JSON Lines: good records (text with NUL and control characters), records without the
    field or with null, and malformed lines."""
    records = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["good", "good", "good", "missing", "null", "malformed"]))
        text = "".join(draw(st.lists(st.sampled_from([*WORDS, *SEPARATORS, "\x00"]), max_size=8)))
        if kind == "good":
            records.append(json.dumps({"body": text, "n": 1}))
        elif kind == "missing":
            records.append(json.dumps({"title": text}))
        elif kind == "null":
            records.append(json.dumps({"body": None}))
        else:
            records.append(draw(st.sampled_from(['{"body": "cut', "{not json", '{"body": 1,}'])))
    return records


@pytest.mark.spark
@SPARK
@given(json_records())
def test_tokenize_stage_on_json_lines(spark, records: list[str]) -> None:
    good, rejected = [], []
    for record in records:
        try:
            value = json.loads(record).get("body")
        except json.JSONDecodeError:
            rejected.append("malformed JSON")
            continue
        if value is None:
            rejected.append("missing field 'body'")
        else:
            good.append(value)
    want = reference_tokens([(text, False) for text in good], 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "docs.jsonl"
        corpus.write_text("\n".join(records) + "\n")
        if not any(n for _, n, _, _ in want):
            return
        config = load_config(
            None,
            [
                f"workdir={tmp}/work",
                f'corpus.paths=["{corpus}"]',
                "corpus.format=jsonl",
                "corpus.text_field=body",
            ],
        )
        manifest = STAGES["tokenize"].run(spark, config)
        table = pq.read_table(Workdir(f"{tmp}/work").table_path("tokens")).sort_by(S.SEQ_ID)
        rejects = Workdir(f"{tmp}/work").table_path("tokens", "rejects") if rejected else None
        rejects = pq.read_table(rejects) if rejects else None
    assert table.column(S.TOKENS).to_pylist() == [t for t, _, _, _ in want]
    assert manifest["counts"]["rejected_records"] == len(rejected)
    if rejects is not None:
        assert sorted(rejects.column(S.REASON).to_pylist()) == sorted(rejected)
        assert all(s.endswith("docs.jsonl") for s in rejects.column(S.SOURCE).to_pylist())


# ---------------------------------------------------------------- build_vocab

tokens_strategy = st.lists(
    st.lists(st.sampled_from(["a", "b", "B", "é", "e", "東", "z", "ab", "😀"]), max_size=10),
    max_size=15,
)
vocab_configs = st.builds(
    VocabConfig,
    min_count=st.integers(1, 4),
    max_size=st.one_of(st.none(), st.integers(1, 6)),
    sample=st.sampled_from([0.0, 1e-3, 0.1]),
    noise_power=st.sampled_from([0.75, 1.0]),
)


@KERNEL
@given(tokens_strategy, st.integers(1, 7))
def test_token_counter(token_lists: list[list[str]], flush: int) -> None:
    counter = TokenCounter(flush_tokens=flush)
    for tokens in token_lists:
        counter.add(pa.array(tokens, pa.string()))
    table = counter.table()
    assert table.column(S.TOKEN).to_pylist() == sorted(table.column(S.TOKEN).to_pylist())
    got = dict(zip(*[table.column(c).to_pylist() for c in (S.TOKEN, S.COUNT)], strict=True))
    assert got == Counter(t for tokens in token_lists for t in tokens)


@KERNEL
@given(tokens_strategy, vocab_configs)
def test_rank_and_sampling_kernels(token_lists: list[list[str]], config: VocabConfig) -> None:
    counts = Counter(t for tokens in token_lists for t in tokens)
    table = pa.table(
        {
            S.TOKEN: pa.array(list(counts), pa.string()),
            S.COUNT: pa.array(list(counts.values()), pa.int64()),
        }
    )
    ranked = rank_words(table, config)
    want = reference_vocab(token_lists, config)
    got = list(zip(*[ranked.column(c).to_pylist() for c in (S.ID, S.TOKEN, S.COUNT)], strict=True))
    assert got == [w[:3] for w in want]
    c = ranked.column(S.COUNT).to_numpy()
    keep, noise = sampling_columns(c, c.astype(np.float64) ** config.noise_power, config)
    np.testing.assert_allclose(keep, [w[3] for w in want], rtol=1e-12)
    np.testing.assert_allclose(noise, [w[4] for w in want], rtol=1e-12)


@KERNEL
@given(st.lists(st.text(max_size=30), max_size=40), st.integers(1, 7))
def test_token_buckets(tokens: list[str], buckets: int) -> None:
    """A fixed bucket per token, in range, the same for a token wherever it appears (also
    in a slice of a larger array)."""
    array = pa.array(["pad", *tokens], pa.string()).slice(1)
    got = token_buckets(array, buckets)
    assert len(got) == len(tokens) and all(0 <= b < buckets for b in got)
    alone = [int(token_buckets(pa.array([t], pa.string()), buckets)[0]) for t in tokens]
    assert got.tolist() == alone


def spark_sampling_columns(spark, ranked: list[tuple], config: VocabConfig) -> list[tuple]:
    """keep_prob and noise_prob by Spark's expressions (the earlier implementation): the
    stage must write exactly these doubles."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = spark.createDataFrame(ranked, "id int, token string, count bigint").coalesce(1)
    everything = Window.partitionBy()
    count = F.col(S.COUNT).cast("double")
    threshold = F.lit(config.sample) * F.sum(count).over(everything)
    keep = F.least(
        F.lit(1.0), F.try_divide((F.sqrt(F.try_divide(count, threshold)) + 1) * threshold, count)
    )
    keep = keep if config.sample > 0 else F.lit(1.0)
    weight = F.pow(count, F.lit(config.noise_power))
    rows = df.select(
        S.ID,
        F.when(count > 0, keep).otherwise(0.0),
        F.coalesce(F.try_divide(weight, F.sum(weight).over(everything)), F.lit(0.0)),
    ).collect()
    return sorted(tuple(r) for r in rows)


@pytest.mark.spark
@SPARK
@given(tokens_strategy, vocab_configs, st.booleans(), st.integers(1, 3))
def test_build_vocab_stage(
    spark, token_lists: list[list[str]], config: VocabConfig, with_counts: bool, parts: int
) -> None:
    """From the partial counts tokenize writes (a token may be in several parts: the sums
    must add them), or from the tokens table alone."""
    tokens = pa.table({S.TOKENS: pa.array(token_lists, pa.list_(pa.string()))})
    with tempfile.TemporaryDirectory() as tmp:
        url = write_parts(Path(tmp, "tokens"), tokens, parts)
        if with_counts:
            size = -(-len(token_lists) // parts) if token_lists else 0
            partial = []
            for i in range(parts):
                c = Counter(t for ts in token_lists[i * size : (i + 1) * size] for t in ts)
                partial.append(
                    pa.table(
                        {
                            S.TOKEN: pa.array(list(c), pa.string()),
                            S.COUNT: pa.array(list(c.values()), pa.int64()),
                        }
                    )
                )
            Path(url, "_counts").mkdir()
            for i, table in enumerate(partial):
                pq.write_table(table, Path(url, "_counts", f"part-{i:05d}.parquet"))
        counts = write_vocab(spark, url, config, f"{tmp}/vocab")
        table = pq.read_table(f"{tmp}/vocab")
    assert table.schema.equals(S.VOCAB_SCHEMA)
    got = [tuple(r.values()) for r in table.to_pylist()]
    want = reference_vocab(token_lists, config)
    assert [g[:3] for g in got] == [w[:3] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g[3] == pytest.approx(w[3], rel=1e-12) and g[4] == pytest.approx(w[4], rel=1e-12)
    exact = spark_sampling_columns(spark, [g[:3] for g in got], config)
    assert [(g[0], g[3], g[4]) for g in got] == exact
    distinct = len({t for ts in token_lists for t in ts})
    assert counts == {
        "distinct_tokens": distinct,
        "vocab_size": len(want),
        "covered_tokens": sum(w[2] for w in want),
    }


# ---------------------------------------------------------------- encode

VOCAB = [*S.SPECIAL_TOKENS, "a", "b", "東", "é"]
encode_tokens = st.lists(
    st.lists(st.sampled_from(["a", "b", "東", "é", "e", "zz", "A"]), max_size=8), max_size=12
)


def reference_encode(token_lists: list[list[str]], oov: str) -> list[list[int]]:
    index = {t: i for i, t in enumerate(VOCAB)}
    if oov == "drop":
        return [[index[t] for t in tokens if t in index] for tokens in token_lists]
    return [[index.get(t, S.UNK_ID) for t in tokens] for tokens in token_lists]


@KERNEL
@given(encode_tokens, st.sampled_from(["unk", "drop"]), st.integers(0, 3))
def test_encode_kernel(token_lists: list[list[str]], oov: str, cut: int) -> None:
    """Also on a sliced batch (Spark hands over slices of larger buffers)."""
    tokens = pa.array([["a"]] * cut + token_lists, pa.list_(pa.string())).slice(cut)
    got = encode_arrow(tokens, pa.array(VOCAB), oov)
    assert got.type == pa.list_(pa.int32())
    assert got.to_pylist() == reference_encode(token_lists, oov)


@pytest.mark.spark
@SPARK
@given(encode_tokens, st.sampled_from(["unk", "drop"]), st.integers(1, 3))
def test_encode_stage(spark, token_lists: list[list[str]], oov: str, parts: int) -> None:
    want = [ids for ids in reference_encode(token_lists, oov) if ids]
    tokens = pa.table({S.TOKENS: pa.array(token_lists, pa.list_(pa.string()))})
    with tempfile.TemporaryDirectory() as tmp:
        url = write_parts(Path(tmp, "tokens"), tokens, parts)
        counts = write_sequences(spark, url, VOCAB, EncodeConfig(oov=oov), f"{tmp}/seq")
        table = pq.read_table(f"{tmp}/seq")
    assert table.schema.equals(S.SEQUENCES_SCHEMA)
    assert table.column(S.IDS).to_pylist() == want  # part files in order, rows in order
    assert table.column(S.LENGTH).to_pylist() == [len(i) for i in table.column(S.IDS).to_pylist()]
    assert counts["sequences"] == len(want)
    assert counts["tokens"] == sum(map(len, want))
    assert counts["unk_tokens"] == sum(i == S.UNK_ID for ids in want for i in ids)
    assert counts["max_length"] == (max(map(len, want)) if want else None)


# ---------------------------------------------------------------- bucket

lengths_strategy = st.lists(st.integers(1, 30), max_size=40)
boundaries_strategy = st.lists(st.integers(1, 30), max_size=4, unique=True).map(sorted)


def reference_bucket(length: int, boundaries: list[int]) -> int:
    return sum(1 for b in boundaries if b < length)


@KERNEL
@given(lengths_strategy, boundaries_strategy)
def test_bucket_kernel(lengths: list[int], boundaries: list[int]) -> None:
    got = bucket_of(np.array(lengths, np.int32), boundaries).tolist()
    assert got == [reference_bucket(n, boundaries) for n in lengths]


@pytest.mark.spark
@SPARK
@given(lengths_strategy, boundaries_strategy)
def test_bucket_stage(spark, lengths: list[int], boundaries: list[int]) -> None:
    sequences = pa.table(
        {
            S.IDS: pa.array([list(range(5, 5 + n)) for n in lengths], pa.list_(pa.int32())),
            S.LENGTH: pa.array(lengths, pa.int32()),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        url = write_parts(Path(tmp, "sequences"), sequences, 2)
        stats = write_buckets(spark, url, boundaries, f"{tmp}/buckets")
        table = read_rows(Path(tmp) / "buckets")
        if not lengths:  # nothing to bucket: one empty file with the schema
            assert table.num_rows == 0 and stats == []
            return
        files = list(Path(tmp, "buckets").rglob("*.parquet"))
        schemas = [pq.read_schema(f) for f in files]
    got = sorted(zip(*[table.column(c).to_pylist() for c in (S.LENGTH, S.BUCKET)], strict=True))
    assert got == sorted((n, reference_bucket(n, boundaries)) for n in lengths)
    assert all(schema.equals(S.SEQUENCES_SCHEMA) for schema in schemas)  # bucket: in the path
    want = {}
    for n in lengths:
        want.setdefault(reference_bucket(n, boundaries), []).append(n)
    assert [s["bucket"] for s in stats] == sorted(want)
    for s in stats:
        members = want[s["bucket"]]
        assert (s["sequences"], s["tokens"]) == (len(members), sum(members))
        assert (s["min_length"], s["max_length"]) == (min(members), max(members))
        waste = 1 - sum(members) / (len(members) * max(members))
        assert s["padding_waste"] == pytest.approx(waste, abs=1e-6)


# ---------------------------------------------------------------- cooccur

id_sequences = st.lists(st.lists(st.integers(0, 24), max_size=14), max_size=14)


@KERNEL
@given(id_sequences, st.integers(1, 7), st.sampled_from([0, 7, 60, 1 << 20]))
def test_cooccur_kernel(sequences: list[list[int]], window: int, dense_cells: int) -> None:
    ids = pa.array(sequences, pa.list_(pa.int32()))
    rows, cols, weights = count_pairs(ids, window, vocab_size=25, dense_cells=dense_cells)
    got = {
        (int(r), int(c)): float(np.float32(w)) for r, c, w in zip(rows, cols, weights, strict=True)
    }
    assert got == reference_cooccur(sequences, window)


@pytest.mark.spark
@SPARK
@given(
    id_sequences,
    st.integers(1, 6),
    st.integers(1, 4),
    st.sampled_from([0.0, 0.3, 1.0]),
    st.sampled_from([8, 1 << 20]),
)
def test_cooccur_stage(
    spark,
    sequences: list[list[int]],
    window: int,
    shards: int,
    min_weight: float,
    group_entries: int,
) -> None:
    """Small `group_entries` cut each shard into several files (row ranges)."""
    config = CooccurConfig(window=window, min_weight=min_weight, num_shards=shards)
    counts = np.bincount([i for s in sequences for i in s], minlength=25)
    table = pa.table({S.IDS: pa.array(sequences, pa.list_(pa.int32()))})
    with tempfile.TemporaryDirectory() as tmp:
        url = write_parts(Path(tmp, "sequences"), table, 3)
        files = write_cooccur(spark, url, config, counts, f"{tmp}/co", group_entries)
        parts = sorted(Path(tmp, "co").rglob("*.parquet"))
        tables = {p.relative_to(Path(tmp, "co")).as_posix(): pq.read_table(p) for p in parts}
    got = {}
    for name, table in tables.items():
        assert table.schema.equals(S.COOCCUR_SCHEMA)
        if table.num_rows == 0:
            assert name == "part-00000.parquet"  # the schema file of an empty matrix
            continue
        shard = int(name.split("/")[0].split("=")[1])
        keys = list(
            zip(table.column(S.ROW).to_pylist(), table.column(S.COL).to_pylist(), strict=True)
        )
        assert keys == sorted(keys) and all(r % shards == shard for r, _ in keys)
        got.update(zip(keys, table.column(S.WEIGHT).to_pylist(), strict=True))
    assert got == reference_cooccur(sequences, window, min_weight)
    shard_files = [n for n in tables if "/" in n]
    assert sum(f["entries"] for f in files) == len(got)
    for shard in range(shards):  # a shard's files in name order are its rows in order
        keys = [
            k
            for n in sorted(shard_files)
            if n.startswith(f"shard={shard}/")
            for k in zip(
                tables[n].column(S.ROW).to_pylist(),
                tables[n].column(S.COL).to_pylist(),
                strict=True,
            )
        ]
        assert keys == sorted(keys)
