"""Exports read back by the tools they are for: gensim (text, binary), DuckDB and Spark."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gensim.models import KeyedVectors
from safetensors.numpy import save_file

from embedpipe.artefacts import ArtefactError, ArtefactStore, Embeddings, write_word2vec_binary
from embedpipe.artefacts.export import FORMATS, export
from embedpipe.artefacts.store import filesystem
from embedpipe.schemas import SPECIAL_TOKENS, VECTORS_SCHEMA, VOCAB_SCHEMA

WORDS = ["the", "king", "café", "数据", "queen"]
TOKENS = [*SPECIAL_TOKENS, *WORDS]

# The vocabulary columns the loader reads (VOCAB_SCHEMA may hold more, for training).
VOCAB_COLUMNS = pa.schema([VOCAB_SCHEMA.field(c) for c in ("id", "token", "count")])


def vectors(n: int = len(TOKENS), d: int = 4) -> np.ndarray:
    rng = np.random.default_rng(7)
    out = rng.standard_normal((n, d)).astype(np.float32)
    out[5, 0] = np.float32(1e-30)  # a subnormal-adjacent value must survive exactly
    return out


def publish_artefact(tmp_path: Path, store: str | Path | None = None) -> Path | str:
    """A published artefact with the 5 special tokens and 5 words (in `store`, default a
    directory under tmp_path)."""
    src = tmp_path / "src"
    src.mkdir()
    save_file({"vectors": vectors()}, src / "vectors.safetensors")
    vocab = pa.Table.from_pydict(
        {"id": list(range(len(TOKENS))), "token": TOKENS, "count": [0] * 5 + [50, 9, 7, 5, 3]},
        schema=VOCAB_COLUMNS,
    )
    pq.write_table(vocab, src / "vocab.parquet")
    files = {name: src / name for name in ("vectors.safetensors", "vocab.parquet")}
    return ArtefactStore(store or tmp_path / "store").publish("emb", files, {"dim": 4})


def test_word2vec_binary_round_trips_through_gensim_exactly(tmp_path: Path) -> None:
    v = vectors()
    path = tmp_path / "v.bin"
    write_word2vec_binary(path, TOKENS, v)

    kv = KeyedVectors.load_word2vec_format(str(path), binary=True)
    assert list(kv.index_to_key) == TOKENS
    np.testing.assert_array_equal(kv.vectors, v)
    np.testing.assert_array_equal(kv["数据"], v[8])

    # The layout the C tool writes: header, then token, space, little-endian floats, newline.
    data = path.read_bytes()
    header = b"10 4\n"
    assert data.startswith(header)
    first = header + TOKENS[0].encode() + b" " + struct.pack("<4f", *v[0]) + b"\n"
    assert data.startswith(first)
    expected = len(header) + sum(len(t.encode()) + 1 + 16 + 1 for t in TOKENS)
    assert len(data) == expected


@pytest.mark.parametrize("bad", ["new york", "", "a\tb"])
def test_word2vec_binary_refuses_tokens_with_whitespace(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="binary format"):
        write_word2vec_binary(tmp_path / "v.bin", ["ok", bad], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2 tokens but 3 vector rows"):
        write_word2vec_binary(tmp_path / "v.bin", ["a", "b"], np.zeros((3, 2)))


@pytest.mark.parametrize("include_special", [False, True])
def test_export_artefact_to_word2vec_formats(tmp_path: Path, include_special: bool) -> None:
    artefact = publish_artefact(tmp_path)
    expected_tokens = TOKENS if include_special else WORDS
    expected = vectors() if include_special else vectors()[5:]

    text = export(artefact, "w2v-text", tmp_path / "v.txt", include_special=include_special)
    binary = export(artefact, "w2v-binary", tmp_path / "v.bin", include_special=include_special)
    assert text == tmp_path / "v.txt" and binary == tmp_path / "v.bin"

    kv_text = KeyedVectors.load_word2vec_format(str(text), binary=False)
    kv_binary = KeyedVectors.load_word2vec_format(str(binary), binary=True)
    for kv in (kv_text, kv_binary):
        assert list(kv.index_to_key) == expected_tokens
        assert np.allclose(kv.vectors, expected, rtol=0, atol=1e-7)
    assert kv_binary.most_similar("king", topn=1)[0][0] in WORDS
    assert not list(tmp_path.glob(".tmp-*"))


def test_export_parquet_is_read_by_duckdb_with_the_schema_types(tmp_path: Path) -> None:
    artefact = publish_artefact(tmp_path)
    out = export(artefact, "parquet", tmp_path / "v.parquet")
    assert pq.read_schema(out).equals(VECTORS_SCHEMA)

    types = {row[0]: row[1] for row in duckdb.sql(f"describe select * from '{out}'").fetchall()}
    assert types == {"token": "VARCHAR", "vector": "FLOAT[]"}
    rows = duckdb.sql(f"select token, vector from '{out}'").fetchall()
    assert [t for t, _ in rows] == WORDS
    for (_, got), want in zip(rows, vectors()[5:], strict=True):
        np.testing.assert_array_equal(np.array(got, dtype=np.float32), want)
    # The vectors work in SQL too: the dot product of "king" with itself is its squared norm.
    norm2 = duckdb.sql(
        f"select list_dot_product(vector, vector) from '{out}' where token = 'king'"
    ).fetchall()[0][0]
    assert norm2 == pytest.approx(float(vectors()[6] @ vectors()[6]), rel=1e-5)


@pytest.mark.spark
def test_export_parquet_is_read_by_spark_with_the_schema_types(
    tmp_path: Path, spark: object
) -> None:
    artefact = publish_artefact(tmp_path)
    out = export(artefact, "parquet", tmp_path / "v.parquet", include_special=True)
    df = spark.read.parquet(str(out))  # type: ignore[attr-defined]
    assert df.schema.simpleString() == "struct<token:string,vector:array<float>>"
    got = {r["token"]: r["vector"] for r in df.collect()}
    assert sorted(got) == sorted(TOKENS)
    for token, want in zip(TOKENS, vectors(), strict=True):
        np.testing.assert_array_equal(np.array(got[token], dtype=np.float32), want)


def test_export_from_embeddings_and_bad_input(tmp_path: Path) -> None:
    emb = Embeddings.from_arrays(["[PAD]", "a", "b"], np.eye(3, dtype=np.float32))
    out = export(emb, "w2v-text", tmp_path / "e.txt")
    assert out.read_text().splitlines() == ["2 3", "a 0 1 0", "b 0 0 1"]
    assert FORMATS == ("w2v-text", "w2v-binary", "parquet", "hf", "sentence-transformers")

    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        export(emb, "csv", tmp_path / "e.csv")  # type: ignore[arg-type]
    with pytest.raises(ArtefactError, match="not a published artefact"):
        export(tmp_path, "parquet", tmp_path / "x.parquet")
    # A failing writer leaves neither the target nor a temporary file behind.
    spaced = Embeddings.from_arrays(["new york"], np.ones((1, 2)))
    with pytest.raises(ValueError, match="new york"):
        export(spaced, "w2v-binary", tmp_path / "s.bin")
    assert not (tmp_path / "s.bin").exists() and not list(tmp_path.glob(".tmp-*"))


def test_export_verifies_the_artefact_first(tmp_path: Path) -> None:
    artefact = publish_artefact(tmp_path)
    target = artefact / "vectors.safetensors"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="modified after publish"):
        export(artefact, "parquet", tmp_path / "x.parquet")


def test_exports_of_an_artefact_in_a_memory_store(tmp_path: Path) -> None:
    """A remote artefact exports to local files gensim and DuckDB read, and to remote ones."""
    url = f"memory://embedpipe-{uuid.uuid4().hex}"
    artefact = publish_artefact(tmp_path, f"{url}/store")
    assert artefact == f"{url}/store/emb/v0001"
    text = export(artefact, "w2v-text", tmp_path / "v.txt")
    binary = export(artefact, "w2v-binary", tmp_path / "v.bin")
    for path, is_binary in ((text, False), (binary, True)):
        kv = KeyedVectors.load_word2vec_format(str(path), binary=is_binary)
        assert list(kv.index_to_key) == WORDS
        np.testing.assert_allclose(kv.vectors, vectors()[5:], rtol=0, atol=1e-7)
    local = export(artefact, "parquet", tmp_path / "v.parquet")
    rows = duckdb.sql(f"select token, vector from '{local}'").fetchall()
    assert [t for t, _ in rows] == WORDS

    remote = export(artefact, "w2v-binary", f"{url}/exports/v.bin")
    assert remote == f"{url}/exports/v.bin"
    fs, path = filesystem(remote)
    assert fs.cat_file(path) == binary.read_bytes()
    assert fs.ls(f"{path.rsplit('/', 1)[0]}", detail=False) == [path]  # no temporary file left
    fs.rm(filesystem(url)[1], recursive=True)
