"""Embeddings.align: a downstream vocabulary mapped onto the vectors, unknown-word rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.numpy import save_file

from embedpipe.artefacts import ArtefactStore, Embeddings, load
from embedpipe.schemas import PAD, UNK

TOKENS = [PAD, UNK, "paris", "london", "rome"]
VECTORS = np.array(
    [
        [9.0, 9.0, 9.0, 9.0],  # [PAD]: huge, so statistics that forgot to skip it would show
        [7.0, 7.0, 7.0, 7.0],  # [UNK]
        [3.0, 0.0, 0.0, 4.0],  # paris: norm 5
        [0.0, 1.0, 0.0, 0.0],  # london: norm 1
        [0.0, 0.0, 2.0, 0.0],  # rome: norm 2
    ],
    dtype=np.float32,
)


@pytest.fixture
def emb() -> Embeddings:
    return Embeddings.from_arrays(TOKENS, VECTORS)


def test_align_looks_up_as_given_then_lower_cased(emb: Embeddings) -> None:
    matrix, found = emb.align(["Paris", "rome", "berlin", "LONDON", "paris"], unknown="zeros")
    assert matrix.dtype == np.float32 and matrix.shape == (5, 4)
    assert found.dtype == bool and found.tolist() == [True, True, False, True, True]
    np.testing.assert_array_equal(matrix, VECTORS[[2, 4, 0, 3, 2]] * found[:, None])
    assert emb.lookup("Rome") == 4 and emb.lookup("berlin") is None

    # An exact match wins over the lower-cased form.
    cased = Embeddings.from_arrays(["Apple", "apple"], np.array([[1.0, 0.0], [0.0, 1.0]]))
    matrix, _ = cased.align(["Apple", "APPLE"], unknown="zeros")
    np.testing.assert_array_equal(matrix, [[1.0, 0.0], [0.0, 1.0]])


def test_align_mean_uses_the_found_words_only(emb: Embeddings) -> None:
    matrix, found = emb.align([PAD, "paris", "london", "x", "y"], unknown="mean")
    assert found.tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(matrix[0], VECTORS[0])  # specials map like any token...
    mean = (VECTORS[2] + VECTORS[3]) / 2  # ...but stay out of the statistics
    np.testing.assert_array_equal(matrix[3], mean)
    np.testing.assert_array_equal(matrix[4], mean)


def test_align_random_rows_have_the_mean_norm_of_the_found_vectors() -> None:
    rng = np.random.default_rng(0)
    dim = 400
    known = rng.standard_normal((3, dim)).astype(np.float32)
    known *= (
        np.array([[1.0], [2.0], [6.0]], dtype=np.float32) / np.linalg.norm(known, axis=1)[:, None]
    )
    emb = Embeddings.from_arrays(["a", "b", "c"], known)
    unknown = [f"w{i}" for i in range(200)]
    matrix, found = emb.align(["a", "b", "c", *unknown], unknown="random", seed=3)
    assert found.sum() == 3
    np.testing.assert_array_equal(matrix[:3], known)
    norms = np.linalg.norm(matrix[3:], axis=1)
    # N(0, (m / sqrt(d))^2 I) rows: E ||row||^2 = m^2 with m = mean(1, 2, 6) = 3, and in 400-d
    # every norm is within a few percent of m.
    assert norms.mean() == pytest.approx(3.0, rel=0.02)
    assert np.all(np.abs(norms - 3.0) < 0.5)
    # Independent rows, reproducible by seed.
    assert abs(np.corrcoef(matrix[3], matrix[4])[0, 1]) < 0.25
    again, _ = emb.align(["a", "b", "c", *unknown], unknown="random", seed=3)
    np.testing.assert_array_equal(again, matrix)
    other, _ = emb.align(["a", "b", "c", *unknown], unknown="random", seed=4)
    assert not np.array_equal(other[3:], matrix[3:])


def test_align_with_no_word_found_uses_the_whole_embedding(emb: Embeddings) -> None:
    matrix, found = emb.align(["x", "y"], unknown="mean")
    assert not found.any()
    np.testing.assert_allclose(matrix, np.tile(VECTORS[2:].mean(axis=0), (2, 1)))
    random_rows, _ = emb.align(["x"] * 2000, unknown="random")
    # E ||row||^2 = m^2 exactly (in 4-d the mean norm itself is about 6% lower).
    rms = np.sqrt((np.linalg.norm(random_rows, axis=1) ** 2).mean())
    assert rms == pytest.approx((5 + 1 + 2) / 3, rel=0.03)


def test_align_edge_cases(emb: Embeddings) -> None:
    matrix, found = emb.align([])
    assert matrix.shape == (0, 4) and found.shape == (0,)
    with pytest.raises(ValueError, match="unknown must be"):
        emb.align(["paris"], unknown="ones")  # type: ignore[arg-type]


def test_aligned_matrix_feeds_an_embedding_layer(emb: Embeddings) -> None:
    vocab = [PAD, "rome", "Paris", "unseen"]
    matrix, found = emb.align(vocab, unknown="zeros")
    layer = torch.nn.Embedding.from_pretrained(torch.from_numpy(matrix), padding_idx=0)
    np.testing.assert_array_equal(layer(torch.tensor([1, 2])).numpy(), VECTORS[[4, 2]])
    assert found.tolist() == [True, True, True, False]


def test_loader_ignores_extra_vocabulary_columns(tmp_path: Path) -> None:
    """Artefacts carry the training vocabulary; columns beyond id/token/count are not needed."""
    src = tmp_path / "src"
    src.mkdir()
    save_file({"vectors": VECTORS}, src / "vectors.safetensors")
    vocab = pa.table(
        {
            "id": pa.array(range(5), pa.int32()),
            "token": TOKENS,
            "count": pa.array([0, 0, 3, 2, 1], pa.int64()),
            "keep_prob": [1.0] * 5,
        }
    )
    pq.write_table(vocab, src / "vocab.parquet")
    files = {n: src / n for n in ("vectors.safetensors", "vocab.parquet")}
    loaded = load(ArtefactStore(tmp_path / "store").publish("emb", files, {}))
    assert loaded.vocab == TOKENS and loaded.counts.tolist() == [0, 0, 3, 2, 1]
