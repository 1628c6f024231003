"""The embedding loader and the exports: queries, torch layers, verified loads, round trips."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from gensim.models import KeyedVectors
from safetensors.numpy import save_file

from embedpipe.artefacts import (
    ArtefactError,
    ArtefactStore,
    Embeddings,
    load,
    write_vectors_parquet,
    write_word2vec_text,
)
from embedpipe.schemas import PAD, UNK, VECTORS_SCHEMA, VOCAB_SCHEMA

# A hand-made table: PAD and UNK point the same way as "king" so that a loader which forgot to
# exclude specials would rank them first.
TOKENS = [PAD, UNK, "king", "queen", "man", "apple", "anti"]
VECTORS = np.array(
    [
        [1.0, 0.0, 0.0],  # [PAD]
        [2.0, 0.0, 0.0],  # [UNK]
        [2.0, 0.0, 0.0],  # king
        [0.9, 0.1, 0.0],  # queen: cos(king) = 0.9 / sqrt(0.82)
        [1.0, 1.0, 0.0],  # man:   cos(king) = 1 / sqrt(2)
        [0.0, 0.0, 3.0],  # apple: cos(king) = 0
        [-1.0, 0.0, 0.0],  # anti: cos(king) = -1
    ],
    dtype=np.float32,
)
COUNTS = np.array([0, 5, 40, 30, 20, 10, 1], dtype=np.int64)
# The vocabulary columns the loader reads (VOCAB_SCHEMA may hold more, for training).
VOCAB_COLUMNS = pa.schema([VOCAB_SCHEMA.field(c) for c in ("id", "token", "count")])


@pytest.fixture
def emb() -> Embeddings:
    return Embeddings.from_arrays(TOKENS, VECTORS, COUNTS)


def write_artefact_files(
    directory: Path,
    tokens: Sequence[str] = TOKENS,
    vectors: np.ndarray = VECTORS,
    counts: np.ndarray = COUNTS,
    ids: Sequence[int] | None = None,
) -> dict[str, Path]:
    """vectors.safetensors and vocab.parquet in `directory`, as a trainer would write them."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"vectors": np.ascontiguousarray(vectors)}, directory / "vectors.safetensors")
    vocab = pa.Table.from_pydict(
        {
            "id": list(range(len(tokens))) if ids is None else list(ids),
            "token": list(tokens),
            "count": counts.tolist(),
        },
        schema=VOCAB_COLUMNS,
    )
    pq.write_table(vocab, directory / "vocab.parquet")
    return {name: directory / name for name in ("vectors.safetensors", "vocab.parquet")}


def test_lookup(emb: Embeddings) -> None:
    assert len(emb) == 7 and emb.dim == 3
    assert "queen" in emb and "prince" not in emb and 3 not in emb
    assert emb.index("queen") == 3
    np.testing.assert_array_equal(emb["man"], [1.0, 1.0, 0.0])
    assert emb["man"].dtype == np.float32
    with pytest.raises(KeyError, match="prince"):
        emb["prince"]
    with pytest.raises(KeyError, match="prince"):
        emb.index("prince")
    assert emb.counts.dtype == np.int64 and emb.counts[2] == 40
    assert Embeddings.from_arrays(["a"], np.ones((1, 2))).counts.tolist() == [0]


def test_from_arrays_refuses_inconsistent_input() -> None:
    with pytest.raises(ValueError, match="2 tokens but 3 vector rows"):
        Embeddings.from_arrays(["a", "b"], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="'a' appears more than once"):
        Embeddings.from_arrays(["a", "b", "a"], np.zeros((3, 2)))


def test_most_similar_orders_by_cosine_and_excludes_query_and_specials(emb: Embeddings) -> None:
    result = emb.most_similar("king")
    assert [w for w, _ in result] == ["queen", "man", "apple", "anti"]
    scores = [s for _, s in result]
    np.testing.assert_allclose(scores, [0.9 / np.sqrt(0.82), 1 / np.sqrt(2), 0.0, -1.0], atol=1e-6)

    assert [w for w, _ in emb.most_similar("king", topn=2)] == ["queen", "man"]
    assert emb.most_similar("king", topn=0) == []

    # A raw vector query excludes only the specials: "king" itself is a candidate.
    by_vector = emb.most_similar(np.array([0.0, 0.0, 1.0]), topn=2)
    assert by_vector[0] == ("apple", pytest.approx(1.0))
    assert [w for w, _ in emb.most_similar(np.array([1.0, 0.0, 0.0]), topn=1)] == ["king"]
    with pytest.raises(ValueError, match="zero vector"):
        emb.most_similar(np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        emb.most_similar(np.ones(4))
    with pytest.raises(KeyError, match="prince"):
        emb.most_similar("prince")


def test_similarity(emb: Embeddings) -> None:
    assert emb.similarity("king", "queen") == pytest.approx(0.9 / np.sqrt(0.82), abs=1e-6)
    assert emb.similarity("king", "anti") == pytest.approx(-1.0)
    assert emb.similarity("apple", np.array([0.0, 0.0, 0.5])) == pytest.approx(1.0)
    np.testing.assert_allclose(np.linalg.norm(emb.normed, axis=1), 1.0, atol=1e-6)


def test_to_torch_frozen_by_default(emb: Embeddings) -> None:
    layer, ids = emb.to_torch()
    assert isinstance(layer, torch.nn.Embedding)
    assert layer.weight.requires_grad is False
    assert layer.padding_idx == 0
    assert ids == {t: i for i, t in enumerate(TOKENS)}
    np.testing.assert_array_equal(layer.weight.detach().numpy(), VECTORS)
    out = layer(torch.tensor([ids["queen"], ids["man"]]))
    np.testing.assert_array_equal(out.numpy(), VECTORS[[3, 4]])
    # The layer owns a copy: changing it does not change the embeddings.
    with torch.no_grad():
        layer.weight[3] = 0.0
    np.testing.assert_array_equal(emb["queen"], VECTORS[3])


def test_to_torch_trainable_gives_no_gradient_to_padding(emb: Embeddings) -> None:
    layer, ids = emb.to_torch(freeze=False)
    assert layer.weight.requires_grad is True
    layer(torch.tensor([ids[PAD], ids["king"], ids[UNK]])).sum().backward()
    grad = layer.weight.grad.numpy()
    np.testing.assert_array_equal(grad[0], 0.0)
    np.testing.assert_array_equal(grad[2], 1.0)
    np.testing.assert_array_equal(grad[1], 1.0)


def test_to_torch_without_pad_has_no_padding_idx() -> None:
    layer, ids = Embeddings.from_arrays(["a", "b"], np.eye(2)).to_torch()
    assert layer.padding_idx is None and ids == {"a": 0, "b": 1}


def test_load_by_path_and_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtefactStore(tmp_path / "store")
    v1 = store.publish("emb", write_artefact_files(tmp_path / "v1"), {"dim": 3})
    other = VECTORS * 2
    v2 = store.publish("emb", write_artefact_files(tmp_path / "v2", vectors=other), {"dim": 3})

    by_path = load(v1)
    assert by_path.path == v1
    assert by_path.vocab == TOKENS
    np.testing.assert_array_equal(by_path.vectors, VECTORS)
    np.testing.assert_array_equal(by_path.counts, COUNTS)
    assert by_path.vectors.dtype == np.float32 and by_path.counts.dtype == np.int64
    assert by_path.manifest is not None
    assert by_path.manifest.version == "v0001" and by_path.manifest.extra == {"dim": 3}
    assert [w for w, _ in by_path.most_similar("king", topn=1)] == ["queen"]

    latest = load("emb", store=tmp_path / "store")
    assert latest.path == v2 and latest.manifest is not None and latest.manifest.version == "v0002"
    np.testing.assert_array_equal(latest.vectors, other)
    assert load("emb", version="v0001", store=store).path == v1
    assert load("emb", version=1, store=str(tmp_path / "store")).path == v1

    monkeypatch.setenv("EMBEDPIPE_STORE", str(tmp_path / "store"))
    store.set_alias("emb", "prod", "v0001")
    assert load("emb", version="prod").path == v1

    with pytest.raises(ArtefactError, match="no artefact named 'missing'"):
        load("missing")
    with pytest.raises(ArtefactError, match="neither an artefact directory"):
        load(tmp_path / "v1")


def test_load_fails_on_a_tampered_artefact(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "store")
    version = store.publish("emb", write_artefact_files(tmp_path / "src"), {})
    target = version / "vectors.safetensors"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last float
    target.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=r"vectors\.safetensors was modified after publish"):
        load(version)
    with pytest.raises(ArtefactError, match="sha256 mismatch"):
        load("emb", store=store)


def test_load_checks_vocab_against_vectors(tmp_path: Path) -> None:
    store = ArtefactStore(tmp_path / "store")
    shuffled = write_artefact_files(tmp_path / "a", ids=[0, 1, 2, 4, 3, 5, 6])
    with pytest.raises(ArtefactError, match=r"ids must be 0\.\.6 in order"):
        load(store.publish("shuffled", shuffled, {}))

    short = write_artefact_files(tmp_path / "b", vectors=VECTORS[:5])
    with pytest.raises(ArtefactError, match="has 7 tokens but .* has 5 rows"):
        load(store.publish("short", short, {}))

    files = write_artefact_files(tmp_path / "c")
    pq.write_table(pa.table({"id": [0], "token": ["a"]}), files["vocab.parquet"])
    with pytest.raises(ArtefactError, match=r"lacks the vocabulary columns \['count'\]"):
        load(store.publish("nocount", files, {}))

    del files["vocab.parquet"]
    with pytest.raises(ArtefactError, match="does not list vocab.parquet"):
        load(store.publish("novocab", files, {}))


def test_word2vec_text_round_trips_through_gensim(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tokens = ["king", "queen", "café", "数据", "[PAD]"]
    vectors = rng.standard_normal((5, 4)).astype(np.float32) * np.float32(1e3)
    vectors[0, 0] = np.float32(1e-30)
    path = tmp_path / "vectors.txt"
    write_word2vec_text(path, tokens, vectors)

    assert path.read_text(encoding="utf-8").splitlines()[0] == "5 4"
    kv = KeyedVectors.load_word2vec_format(str(path), binary=False)
    assert list(kv.index_to_key) == tokens
    np.testing.assert_allclose(kv.vectors, vectors, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(kv["café"], vectors[2])


@pytest.mark.parametrize("bad", ["new york", "tab\there", "line\nbreak", ""])
def test_word2vec_text_refuses_tokens_with_whitespace(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace("\\", "\\\\")):
        write_word2vec_text(tmp_path / "v.txt", ["ok", bad], np.zeros((2, 2)))


def test_vectors_parquet_round_trips_through_duckdb(tmp_path: Path) -> None:
    tokens = ["king", "queen", "café"]
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / np.float32(7)
    path = tmp_path / "x.parquet"
    write_vectors_parquet(path, tokens, vectors)

    assert pq.read_schema(path).equals(VECTORS_SCHEMA)
    rows = duckdb.sql(f"select token, vector from '{path}' order by token").fetchall()
    got = dict(rows)
    assert sorted(got) == sorted(tokens)
    for token, vector in zip(tokens, vectors, strict=True):
        np.testing.assert_allclose(np.array(got[token], dtype=np.float32), vector, atol=1e-6)
    with pytest.raises(ValueError, match="2 tokens but 3 vector rows"):
        write_vectors_parquet(path, tokens[:2], vectors)
