"""Embeddings' one lookup rule, the same in every method that takes a word; light imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import embedpipe
from embedpipe.artefacts import Embeddings
from embedpipe.schemas import PAD, UNK

TOKENS = [PAD, UNK, "king", "queen", "man", "woman", "0000", "Apple", "apple"]
VECTORS = np.random.default_rng(3).standard_normal((len(TOKENS), 6)).astype(np.float32)


def test_king_resolves_to_king_in_every_method() -> None:
    emb = Embeddings(VECTORS, TOKENS, tokenizer={"lowercase": True, "nfkc": True})
    king = TOKENS.index("king")
    for word in ("King", "KING", "\uff2b\uff49\uff4e\uff47"):  # the last: fullwidth "Ｋｉｎｇ"
        assert emb.lookup(word) == emb.index(word) == king
        assert word in emb and emb.has_index_for(word)
        np.testing.assert_array_equal(emb[word], VECTORS[king])
        np.testing.assert_array_equal(emb.get_vector(word, norm=True), emb.normed[king])
        assert emb.most_similar(word) == emb.most_similar("king")
        assert "king" not in [w for w, _ in emb.most_similar(word)]
        assert emb.most_similar(positive=[word], negative=["man"]) == emb.most_similar(
            positive=["king"], negative=["man"]
        )
        assert emb.similarity(word, "queen") == emb.similarity("king", "queen")
        assert emb.similarity(word, "king") == pytest.approx(1.0)
        matrix, found = emb.align([word], unknown="zeros")
        assert found.tolist() == [True] and np.array_equal(matrix[0], VECTORS[king])
    assert "King" not in emb.key_to_index  # the raw vocabulary, as gensim's


def test_an_exact_token_wins_over_its_normalised_form() -> None:
    emb = Embeddings(VECTORS, TOKENS)  # no settings recorded: the tokenizer's defaults
    assert emb.index("Apple") == 7 and emb.index("apple") == 8 and emb.index("APPLE") == 8
    np.testing.assert_array_equal(emb["Apple"], VECTORS[7])
    assert [w for w, _ in emb.most_similar("Apple", topn=20)].count("apple") == 1


def test_a_word_that_does_not_resolve_fails_the_same_everywhere() -> None:
    emb = Embeddings(VECTORS, TOKENS, tokenizer={"lowercase": False})  # a cased vocabulary
    assert emb.lookup("King") is None and "King" not in emb and not emb.has_index_for("King")
    for call in (
        lambda: emb["King"],
        lambda: emb.index("King"),
        lambda: emb.get_vector("King"),
        lambda: emb.most_similar("King"),
        lambda: emb.most_similar(positive=["queen"], negative=["King"]),
        lambda: emb.similarity("King", "queen"),
    ):
        with pytest.raises(KeyError, match="'King' is not in the vocabulary"):
            call()
    assert emb.align(["King"], unknown="zeros")[1].tolist() == [False]
    assert emb.lookup(3) is None and 3 not in emb  # type: ignore[arg-type]


def test_digits_fold_as_the_tokenizer_folded_them() -> None:
    digits = Embeddings(VECTORS, TOKENS, tokenizer={"digits": True})
    assert digits.index("1984") == 6 and digits.index("٣٤٥٦") == 6  # Arabic-Indic digits
    assert Embeddings(VECTORS, TOKENS).lookup("1984") is None
    sentencepiece = Embeddings(VECTORS, TOKENS, tokenizer={"digits": True, "kind": "sentencepiece"})
    assert sentencepiece.lookup("1984") is None  # SentencePiece keeps digits


def test_query_errors_name_the_problem() -> None:
    emb = Embeddings(VECTORS, TOKENS)
    with pytest.raises(ValueError, match="at least one positive or negative"):
        emb.most_similar()
    with pytest.raises(TypeError, match="got int"):
        emb.most_similar(positive=[3])
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        emb.most_similar(positive=[np.ones(4)])
    with pytest.raises(ValueError, match="zero vector"):
        emb.most_similar(positive=["king"], negative=["king"])
    assert not emb["king"].flags.writeable  # a view of the vectors, read-only as in gensim


def test_loading_and_querying_import_no_heavy_library() -> None:
    src = Path(embedpipe.__file__).parents[1]
    code = (
        "import sys, numpy as np\n"
        "from embedpipe.artefacts import Embeddings\n"
        "e = Embeddings(np.eye(3, dtype=np.float32), ['[PAD]', 'king', 'queen'])\n"
        "e.most_similar(positive=['King'], topn=1); e.similarity('king', 'Queen')\n"
        "heavy = ('torch', 'gensim', 'scipy', 'regex', 'yaml', 'sentencepiece', 'pyspark')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
