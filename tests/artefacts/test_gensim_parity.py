"""Embeddings answers gensim's KeyedVectors calls with gensim's results, on the same vectors.

Every comparison runs gensim 4 itself (the test extra) on the vectors of the Embeddings:
a KeyedVectors built from the same arrays, or the one `to_gensim()` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gensim.models import KeyedVectors

from embedpipe.artefacts import Embeddings
from embedpipe.schemas import SPECIAL_TOKENS, UNK

DIM = 12
# w000..w119 by frequency, then two rarer case variants: gensim's case_insensitive rules take
# the first variant, and never answer an analogy with a variant of a, b or c.
WORDS = [f"w{i:03d}" for i in range(120)] + ["W005", "W013"]
COUNTS = np.arange(len(WORDS), 0, -1, dtype=np.int64) * 10


def _vectors() -> np.ndarray:
    """Seeded random vectors in which some analogies hold: d = b - a + c + noise."""
    rng = np.random.default_rng(17)
    vectors = rng.standard_normal((len(WORDS), DIM)).astype(np.float32)
    row = {w: i for i, w in enumerate(WORDS)}
    for a, b, c, d in QUADS[:12]:
        offset = vectors[row[b]] - vectors[row[a]] + vectors[row[c]]
        vectors[row[d]] = offset + 0.05 * rng.standard_normal(DIM)
    # W005 is exactly on w006 - w005 + w007 (gensim skips it: a variant of a), then w008;
    # W013 is exactly on w011 - w010 + w012 (gensim counts it: a variant of the answer).
    vectors[row["W005"]] = vectors[row["w006"]] - vectors[row["w005"]] + vectors[row["w007"]]
    vectors[row["w008"]] = vectors[row["W005"]] + 0.05 * rng.standard_normal(DIM)
    vectors[row["W013"]] = vectors[row["w011"]] - vectors[row["w010"]] + vectors[row["w012"]]
    return vectors


QUADS = [tuple(f"w{20 + 4 * j + k:03d}" for k in range(4)) for j in range(25)]
VECTORS = _vectors()
ANALOGIES = "\n".join(
    [": capital-common-countries"]
    + [" ".join(q) for q in QUADS[:8]]
    + ["w005 w006 w007 w008", "w010 w011 w012 w013", "w001 w002 w003 zzz"]
    + [": gram1-adjective-to-adverb"]
    + [" ".join(q) for q in QUADS[8:]]
    + ["W020 W021 W022 W023", "w030 w031 w032 W033"]
)


def _pairs() -> str:
    """A word-pairs file whose human scores follow the cosines, with noise (a real, imperfect
    correlation), plus pairs with a case variant or an unknown word."""
    rng = np.random.default_rng(5)
    unit = VECTORS / np.linalg.norm(VECTORS, axis=1, keepdims=True)
    lines = ["# word1\tword2\tscore"]
    for i in range(60):
        j = (7 * i + 3) % 120
        score = 5.0 + 4.0 * float(unit[i] @ unit[j]) + rng.normal(0.0, 1.0)
        lines.append(f"w{i:03d}\tw{j:03d}\t{score:.3f}")
    return "\n".join([*lines, "W005\tw040\t2.5", "w013\tW013\t9.0", "w001\tzzz\t4.0"])


PAIRS = _pairs()
SETTINGS = [
    {"restrict_vocab": 300000, "case_insensitive": True, "dummy4unknown": False},
    {"restrict_vocab": 300000, "case_insensitive": False, "dummy4unknown": False},
    {"restrict_vocab": 100, "case_insensitive": True, "dummy4unknown": False},
    {"restrict_vocab": 100, "case_insensitive": True, "dummy4unknown": True},
]


@pytest.fixture(scope="module")
def emb() -> Embeddings:
    return Embeddings.from_arrays(WORDS, VECTORS, COUNTS)


@pytest.fixture(scope="module")
def kv() -> KeyedVectors:
    kv = KeyedVectors(DIM)
    kv.add_vectors(WORDS, VECTORS)
    return kv


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("benchmarks")
    (folder / "pairs.tsv").write_text(PAIRS + "\n", encoding="utf-8")
    (folder / "questions-words.txt").write_text(ANALOGIES + "\n", encoding="utf-8")
    return {"pairs": folder / "pairs.tsv", "analogies": folder / "questions-words.txt"}


def assert_same_neighbours(ours: Any, theirs: Any) -> None:
    """The same words in the same order, cosines equal to 1e-5."""
    assert [w for w, _ in ours] == [w for w, _ in theirs]
    np.testing.assert_allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-5)


def assert_same_correlations(ours: Any, theirs: Any) -> None:
    """((r, p), (rho, p), oov %) equal to 1e-6."""
    for (value, p), (g_value, g_p) in zip(ours[:2], theirs[:2], strict=True):
        assert (value, p) == pytest.approx((float(g_value), float(g_p)), abs=1e-6)
    assert ours[2] == pytest.approx(theirs[2])


QUERIES: list[dict[str, Any]] = [
    {"positive": "w003"},
    {"positive": ["w003"], "topn": 1},
    {"positive": ["w021", "w022"], "negative": ["w020"], "topn": 5},
    {"positive": [("w021", 2.0), "w022"], "negative": [("w020", -0.5)], "topn": 7},
    {"negative": "w050", "topn": 3},
    {"positive": [VECTORS[9] * 3.0], "topn": 4},
    {"positive": ["w040", VECTORS[41]], "negative": [VECTORS[42]], "topn": 6},
    {"positive": ["w003", "w004"], "topn": 50, "restrict_vocab": 60},
    {"positive": "w003", "topn": 500},
    {"positive": ["w100", "w001"], "topn": 500, "restrict_vocab": 50},
]


@pytest.mark.parametrize("query", QUERIES, ids=range(len(QUERIES)))
def test_most_similar_equals_gensim(emb: Embeddings, kv: KeyedVectors, query: dict) -> None:
    assert_same_neighbours(emb.most_similar(**query), kv.most_similar(**query))


def test_most_similar_positional_word_and_vector(emb: Embeddings, kv: KeyedVectors) -> None:
    assert_same_neighbours(emb.most_similar("w007", topn=4), kv.most_similar("w007", topn=4))
    assert_same_neighbours(emb.most_similar(VECTORS[7]), kv.most_similar(VECTORS[7]))
    assert emb.most_similar("w007", topn=0) == [] == kv.most_similar("w007", topn=0)


def test_most_similar_all_scores(emb: Embeddings, kv: KeyedVectors) -> None:
    ours = emb.most_similar("w010", topn=None)
    assert isinstance(ours, np.ndarray) and ours.shape == (len(WORDS),)
    np.testing.assert_allclose(ours, kv.most_similar("w010", topn=None), atol=1e-5)
    restricted = emb.most_similar("w010", topn=None, restrict_vocab=30)
    gensim_restricted = kv.most_similar("w010", topn=None, restrict_vocab=30)
    np.testing.assert_allclose(restricted, gensim_restricted, atol=1e-5)


def test_similarity_vectors_and_vocabulary(emb: Embeddings, kv: KeyedVectors) -> None:
    for a, b in [("w001", "w002"), ("w020", "w023"), ("w005", "W005"), ("w119", "w119")]:
        assert emb.similarity(a, b) == pytest.approx(float(kv.similarity(a, b)), abs=1e-6)
    for word in ("w000", "w064", "W013"):
        np.testing.assert_array_equal(emb.get_vector(word), kv.get_vector(word))
        np.testing.assert_allclose(
            emb.get_vector(word, norm=True), kv.get_vector(word, norm=True), atol=1e-7
        )
        assert np.linalg.norm(emb.get_vector(word, norm=True)) == pytest.approx(1.0)
    np.testing.assert_array_equal(emb[["w001", "w002"]], kv[["w001", "w002"]])
    assert emb.key_to_index == kv.key_to_index
    assert emb.index_to_key == kv.index_to_key
    assert emb.vector_size == kv.vector_size == DIM
    np.testing.assert_array_equal(emb.vectors, kv.vectors)
    for word in ("w000", "W005", "zzz", ""):
        assert emb.has_index_for(word) == kv.has_index_for(word) == (word in emb) == (word in kv)


@pytest.mark.parametrize("options", SETTINGS, ids=range(len(SETTINGS)))
def test_evaluate_word_pairs_equals_gensim(
    emb: Embeddings, kv: KeyedVectors, files: dict[str, Path], options: dict
) -> None:
    ours = emb.evaluate_word_pairs(files["pairs"], **options)
    assert_same_correlations(ours, kv.evaluate_word_pairs(str(files["pairs"]), **options))
    (pearson, _), (spearman, _), oov = ours
    assert pearson > 0.5 and spearman > 0.5 and 0.0 < oov < 100.0  # real, with unknown pairs


def test_evaluate_word_pairs_takes_rows(emb: Embeddings, kv: KeyedVectors, files: dict) -> None:
    rows = [tuple(line.split("\t")) for line in PAIRS.splitlines()[1:]]
    rows = [(a, b, float(s)) for a, b, s in rows]
    assert emb.evaluate_word_pairs(rows) == emb.evaluate_word_pairs(files["pairs"])
    with pytest.raises(ValueError, match="the pairs given: 0 scorable pairs"):
        emb.evaluate_word_pairs([("zzz", "yyy", 1.0)])


@pytest.mark.parametrize("options", SETTINGS, ids=range(len(SETTINGS)))
def test_evaluate_word_analogies_equals_gensim(
    emb: Embeddings, kv: KeyedVectors, files: dict[str, Path], options: dict
) -> None:
    score, sections = emb.evaluate_word_analogies(files["analogies"], **options)
    g_score, g_sections = kv.evaluate_word_analogies(str(files["analogies"]), **options)
    assert sections == g_sections
    assert score == pytest.approx(g_score)
    correct = len(sections[-1]["correct"])
    assert 0 < correct < correct + len(sections[-1]["incorrect"])  # some right, some wrong


def test_evaluate_word_analogies_takes_rows(emb: Embeddings, files: dict[str, Path]) -> None:
    rows = [("family", *q) for q in QUADS[:4]]
    score, sections = emb.evaluate_word_analogies(rows)
    assert [s["section"] for s in sections] == ["family", "Total accuracy"]
    assert score == len(sections[0]["correct"]) / 4
    assert [tuple(w.upper() for w in q) for q in QUADS[:4]] == sorted(
        sections[0]["correct"] + sections[0]["incorrect"]
    )


@pytest.fixture(scope="module")
def with_specials() -> Embeddings:
    """The words after the special tokens; [UNK] is a copy of w001, so a special token
    that leaked into the candidates would top every query about w001."""
    specials = np.tile(VECTORS[1], (len(SPECIAL_TOKENS), 1))
    counts = np.concatenate([np.zeros(len(SPECIAL_TOKENS), np.int64), COUNTS])
    return Embeddings.from_arrays([*SPECIAL_TOKENS, *WORDS], np.vstack([specials, VECTORS]), counts)


def test_to_gensim_round_trip(with_specials: Embeddings, emb: Embeddings) -> None:
    kv = with_specials.to_gensim()
    assert type(kv) is KeyedVectors
    assert kv.index_to_key == WORDS and kv.key_to_index == emb.key_to_index
    np.testing.assert_array_equal(kv.vectors, VECTORS)
    assert [kv.get_vecattr(w, "count") for w in WORDS] == COUNTS.tolist()
    back = Embeddings.from_arrays(kv.index_to_key, kv.vectors, kv.expandos["count"])
    np.testing.assert_array_equal(back.vectors, emb.vectors)
    assert back.vocab == emb.vocab and back.counts.tolist() == emb.counts.tolist()
    kv.vectors[0] = 0.0  # a copy: changing it leaves the embeddings alone
    np.testing.assert_array_equal(with_specials["w000"], VECTORS[0])

    full = with_specials.to_gensim(include_special=True)
    assert full.index_to_key == with_specials.index_to_key
    assert full.key_to_index == with_specials.key_to_index
    np.testing.assert_array_equal(full.vectors, with_specials.vectors)


def test_special_tokens_answer_like_to_gensim(
    with_specials: Embeddings, files: dict[str, Path]
) -> None:
    kv = with_specials.to_gensim()
    for query in [*QUERIES, {"positive": "w001", "topn": 3}]:
        assert_same_neighbours(with_specials.most_similar(**query), kv.most_similar(**query))
    assert UNK not in [w for w, _ in with_specials.most_similar("w001", topn=len(WORDS))]
    for options in SETTINGS:
        assert_same_correlations(
            with_specials.evaluate_word_pairs(files["pairs"], **options),
            kv.evaluate_word_pairs(str(files["pairs"]), **options),
        )
        ours = with_specials.evaluate_word_analogies(files["analogies"], **options)
        assert ours == kv.evaluate_word_analogies(str(files["analogies"]), **options)
