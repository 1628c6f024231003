"""Tests for embedpipe.evaluate: exact values on hand-made vectors, and the bundled data files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from embedpipe.artefacts import Metrics
from embedpipe.evaluate import (
    BENCHMARKS,
    DATA_DIR,
    benchmark,
    evaluate_all,
    evaluate_analogy,
    evaluate_similarity,
    format_score,
    nearest_neighbours,
    read_analogies,
    read_pairs,
    score_rows,
)

ANALOGY_FILE = benchmark("analogy").data
SIMILARITY_FILES = [b.data for b in BENCHMARKS if b.kind == "similarity"]


def _angles(*degrees: float) -> np.ndarray:
    """2-D unit vectors at the given angles, so cosines are known exactly."""
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# Similarity: cos(a, b) > cos(a, c) > cos(a, d) by construction.
SIM_VOCAB = ["a", "b", "c", "d"]
SIM_VECTORS = _angles(0, 10, 45, 90) * np.array(
    [[3.0], [0.5], [2.0], [1.0]]
)  # norms must not matter


def test_similarity_same_order_gives_plus_one() -> None:
    pairs = [("a", "b", 9.0), ("a", "c", 5.0), ("a", "d", 1.0)]
    result = evaluate_similarity(SIM_VECTORS, SIM_VOCAB, pairs)
    assert result == {"spearman": pytest.approx(1.0), "pairs": 3, "found": 3, "oov_rate": 0.0}


def test_similarity_reversed_order_gives_minus_one() -> None:
    pairs = [("a", "b", 1.0), ("a", "c", 5.0), ("a", "d", 9.0)]
    assert evaluate_similarity(SIM_VECTORS, SIM_VOCAB, pairs)["spearman"] == pytest.approx(-1.0)


def test_similarity_counts_oov_pairs() -> None:
    pairs = [
        ("a", "b", 9.0),
        ("a", "c", 5.0),
        ("a", "d", 1.0),
        ("a", "zebra", 3.0),
        ("yak", "b", 2.0),
    ]
    result = evaluate_similarity(SIM_VECTORS, SIM_VOCAB, pairs)
    assert result["pairs"] == 5
    assert result["found"] == 3
    assert result["oov_rate"] == pytest.approx(0.4)
    assert result["spearman"] == pytest.approx(1.0)


def test_similarity_folds_case_unless_disabled() -> None:
    pairs = [("A", "B", 9.0), ("a", "C", 5.0), ("a", "d", 1.0)]
    assert evaluate_similarity(SIM_VECTORS, SIM_VOCAB, pairs)["found"] == 3
    strict = evaluate_similarity(SIM_VECTORS, SIM_VOCAB, pairs, case_insensitive=False)
    assert strict["found"] == 1
    assert math.isnan(strict["spearman"])


def test_similarity_nan_when_fewer_than_two_pairs() -> None:
    result = evaluate_similarity(SIM_VECTORS, SIM_VOCAB, [("a", "b", 1.0), ("x", "y", 2.0)])
    assert math.isnan(result["spearman"])
    assert (result["found"], result["oov_rate"]) == (1, 0.5)
    empty = evaluate_similarity(SIM_VECTORS, SIM_VOCAB, [])
    assert math.isnan(empty["spearman"]) and empty["oov_rate"] == 0.0


def test_similarity_rejects_mismatched_vocab() -> None:
    with pytest.raises(ValueError, match="vocab"):
        evaluate_similarity(SIM_VECTORS, SIM_VOCAB[:3], [])


def test_random_vectors_do_not_correlate_with_wordsim() -> None:
    pairs = read_pairs(benchmark("wordsim353").data)
    vocab = sorted({w.lower() for w1, w2, _ in pairs for w in (w1, w2)})
    vectors = np.random.default_rng(0).normal(size=(len(vocab), 50))
    result = evaluate_similarity(vectors, vocab, pairs)
    assert result["found"] == 353 and result["oov_rate"] == 0.0
    assert abs(result["spearman"]) < 0.3


# Analogy: woman - man + king == queen exactly.
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ANA_VOCAB = [*SPECIALS, "man", "woman", "king", "queen", "apple"]
ANA_VECTORS = np.array(
    [[1.0, 1.0, 1.0]] * len(SPECIALS)  # identical to queen: would win if specials were candidates
    + [
        [1.0, 0.0, 0.0],  # man
        [1.0, 1.0, 0.0],  # woman
        [1.0, 0.0, 1.0],  # king
        [1.0, 1.0, 1.0],  # queen
        [0.0, 0.0, -1.0],  # apple
    ]
)


def test_analogy_answers_exact_offset() -> None:
    result = evaluate_analogy(ANA_VECTORS, ANA_VOCAB, [("family", "man", "woman", "king", "queen")])
    assert result["accuracy"] == 1.0
    assert result["semantic_accuracy"] == 1.0
    assert result["coverage"] == 1.0
    assert (result["questions"], result["answered"]) == (1, 1)


def test_analogy_excludes_question_words() -> None:
    # b - a + c == (0, 1.1) points straight at c; the best non-question candidate is d.
    vocab = ["a", "b", "c", "d", "e"]
    vectors = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.5, 1.0], [1.0, 0.2]])
    result = evaluate_analogy(vectors, vocab, [("s", "a", "b", "c", "d")])
    assert result["accuracy"] == 1.0


def test_analogy_missing_answer_is_not_counted() -> None:
    questions = [
        ("family", "man", "woman", "king", "queen"),
        ("family", "man", "woman", "king", "empress"),
    ]
    result = evaluate_analogy(ANA_VECTORS, ANA_VOCAB, questions)
    assert result["questions"] == 2
    assert result["answered"] == 1
    assert result["coverage"] == 0.5
    assert result["accuracy"] == 1.0


def test_analogy_semantic_syntactic_split() -> None:
    questions = [
        ("family", "man", "woman", "king", "queen"),  # semantic, correct
        ("capital-world", "man", "woman", "king", "apple"),  # semantic, wrong (queen wins)
        ("gram2-opposite", "king", "queen", "man", "woman"),  # syntactic, correct
        ("gram8-plural", "king", "queen", "man", "apple"),  # syntactic, wrong (woman wins)
        ("gram8-plural", "king", "queen", "man", "men"),  # syntactic, OOV
    ]
    result = evaluate_analogy(ANA_VECTORS, ANA_VOCAB, questions)
    assert result["questions"] == 5
    assert result["answered"] == 4
    assert (result["semantic_answered"], result["syntactic_answered"]) == (2, 2)
    assert result["accuracy"] == 0.5
    assert result["semantic_accuracy"] == 0.5
    assert result["syntactic_accuracy"] == 0.5
    assert result["coverage"] == 0.8

    only_semantic = evaluate_analogy(ANA_VECTORS, ANA_VOCAB, questions[:1])
    assert only_semantic["syntactic_accuracy"] == 0.0
    assert only_semantic["syntactic_answered"] == 0


def test_analogy_restrict_excludes_words_beyond_limit() -> None:
    question = [("family", "man", "woman", "king", "queen")]
    # Special tokens do not use up the budget: the four non-special words are candidates.
    assert evaluate_analogy(ANA_VECTORS, ANA_VOCAB, question, restrict=4)["answered"] == 1
    # queen is the 4th non-special word, so restrict=3 drops it and the question.
    limited = evaluate_analogy(ANA_VECTORS, ANA_VOCAB, question, restrict=3)
    assert limited == {
        "accuracy": 0.0,
        "semantic_accuracy": 0.0,
        "syntactic_accuracy": 0.0,
        "coverage": 0.0,
        "questions": 1,
        "answered": 0,
        "semantic_answered": 0,
        "syntactic_answered": 0,
    }


def test_analogy_restrict_drops_distractor_beyond_limit() -> None:
    # "regina" sits exactly on b - a + c but is rarer than the restrict limit.
    vocab = ["man", "woman", "king", "queen", "regina"]
    vectors = np.array(
        [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [1.0, 0.9, 1.0], [1.0, 1.0, 1.0]]
    )
    question = [("family", "man", "woman", "king", "queen")]
    assert evaluate_analogy(vectors, vocab, question, restrict=5)["accuracy"] == 0.0
    assert evaluate_analogy(vectors, vocab, question, restrict=4)["accuracy"] == 1.0


def test_analogy_folds_case_of_questions() -> None:
    question = [("family", "Man", "Woman", "King", "Queen")]
    assert evaluate_analogy(ANA_VECTORS, ANA_VOCAB, question)["accuracy"] == 1.0
    assert (
        evaluate_analogy(ANA_VECTORS, ANA_VOCAB, question, case_insensitive=False)["answered"] == 0
    )


def test_analogy_batches_many_questions() -> None:
    questions = [("family", "man", "woman", "king", "queen")] * 1500 + [
        ("gram8-plural", "king", "queen", "man", "apple")
    ] * 1000
    result = evaluate_analogy(ANA_VECTORS, ANA_VOCAB, questions)
    assert result["answered"] == 2500
    assert result["semantic_accuracy"] == 1.0
    assert result["syntactic_accuracy"] == 0.0
    assert result["accuracy"] == pytest.approx(0.6)


def test_analogy_empty_questions() -> None:
    result = evaluate_analogy(ANA_VECTORS, ANA_VOCAB, [])
    assert result["accuracy"] == 0.0 and result["coverage"] == 0.0


def _analogy_vocab() -> list[str]:
    """Every (lower-cased) word of the bundled analogy set, in first-seen order."""
    return list(dict.fromkeys(w.lower() for q in read_analogies(ANALOGY_FILE) for w in q[1:]))


def test_analogy_matches_gensim() -> None:
    gensim_models = pytest.importorskip("gensim.models")
    words = _analogy_vocab()
    vectors = np.random.default_rng(1).normal(size=(len(words), 4)).astype(np.float32)
    kv = gensim_models.KeyedVectors(4)
    kv.add_vectors(words, vectors)
    for restrict in (150, 400):
        ours = evaluate_analogy(vectors, words, read_analogies(ANALOGY_FILE), restrict=restrict)
        score, sections = kv.evaluate_word_analogies(str(ANALOGY_FILE), restrict_vocab=restrict)
        total = sections[-1]
        assert ours["answered"] == len(total["correct"]) + len(total["incorrect"])
        assert ours["accuracy"] == pytest.approx(score)


# Bundled files.
def test_data_dir_holds_the_benchmarks() -> None:
    assert (DATA_DIR / "README.md").is_file()
    assert all(Path(b.data).is_file() for b in BENCHMARKS)
    assert ANALOGY_FILE.is_file()


def test_bundled_files_parse() -> None:
    wordsim = read_pairs(benchmark("wordsim353").data)
    simlex = read_pairs(benchmark("simlex999").data)
    assert len(wordsim) == 353
    assert len(simlex) == 999
    assert wordsim[0] == ("love", "sex", 6.77)
    assert simlex[0] == ("old", "new", 1.58)

    questions = read_analogies(ANALOGY_FILE)
    assert len(questions) == 19544
    assert questions[0] == ("capital-common-countries", "Athens", "Greece", "Baghdad", "Iraq")
    sections = {q[0] for q in questions}
    assert len(sections) == 14
    assert sum(q[0].startswith("gram") for q in questions) == 10675
    assert sum(not q[0].startswith("gram") for q in questions) == 8869


def test_malformed_pair_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text("# comment\nold\tnew\t1.5\n\nold new 2.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tsv:4"):
        read_pairs(path)
    path.write_text("old\tnew\thigh\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tsv:1"):
        read_pairs(path)


def test_malformed_analogy_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(": family\nman woman king queen\nman woman king\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:3"):
        read_analogies(path)
    path.write_text("man woman king queen\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:1"):
        read_analogies(path)


def test_evaluate_all_on_bundled_files() -> None:
    words = _analogy_vocab()
    for path in SIMILARITY_FILES:
        words += [w.lower() for w1, w2, _ in read_pairs(path) for w in (w1, w2)]
    vocab = SPECIALS + list(dict.fromkeys(words))
    vectors = np.random.default_rng(2).normal(size=(len(vocab), 16))
    result = evaluate_all(vectors, vocab)
    assert list(result) == [b.name for b in BENCHMARKS] == ["wordsim353", "simlex999", "analogy"]
    assert result["wordsim353"]["found"] == 353
    assert result["simlex999"]["found"] == 999
    assert result["analogy"]["questions"] == 19544
    assert result["analogy"]["coverage"] == 1.0


# Nearest neighbours.
def test_nearest_neighbours() -> None:
    vocab = ["[PAD]", "[UNK]", "a", "b", "c", "d"]
    vectors = _angles(0, 1, 0, 30, 60, 90)  # specials sit right next to "a"
    result = nearest_neighbours(vectors, vocab, ["a", "D", "nope"], k=2)
    assert list(result) == ["a", "D", "nope"]
    assert [w for w, _ in result["a"]] == ["b", "c"]
    assert [s for _, s in result["a"]] == pytest.approx([math.cos(math.pi / 6), 0.5])
    assert [w for w, _ in result["D"]] == ["c", "b"]
    assert result["nope"] == []


def test_nearest_neighbours_k_larger_than_vocab() -> None:
    vocab = ["[PAD]", "a", "b", "c"]
    vectors = _angles(0, 0, 30, 60)
    result = nearest_neighbours(vectors, vocab, ["a"], k=10)
    assert [w for w, _ in result["a"]] == ["b", "c"]
    assert nearest_neighbours(vectors, vocab, ["a"], k=0) == {"a": []}


# The registry.
def test_registry_declares_each_benchmark_once_with_its_fields() -> None:
    names = [b.name for b in BENCHMARKS]
    assert len(set(names)) == len(names)
    for bench in BENCHMARKS:
        assert benchmark(bench.name) is bench
        assert bench.fields[0] == bench.metric
        assert bench.coverage in bench.fields
        assert bench.data.parent == DATA_DIR
    assert benchmark("wordsim353").words() >= {"love", "sex", "tiger"}
    assert benchmark("analogy").words() == set()
    with pytest.raises(KeyError, match="no benchmark 'nope' .*wordsim353, simlex999, analogy"):
        benchmark("nope")


def test_score_rows_read_every_declared_benchmark() -> None:
    metrics = Metrics.from_json(
        {
            "wordsim353": {"spearman": 0.5, "oov_rate": 0.25, "pairs": 353},
            "simlex999": {"spearman": math.nan, "oov_rate": 1.0},
            "analogy": {"accuracy": 0.125, "coverage": 0.75},
            "neighbours": {"dog": [["cat", 0.9]]},
        },
        "test",
    )
    assert score_rows(metrics) == [
        {"benchmark": "wordsim353", "metric": "spearman", "value": 0.5, "coverage": 0.75},
        {"benchmark": "simlex999", "metric": "spearman", "value": pytest.approx(math.nan, nan_ok=True), "coverage": 0.0},
        {"benchmark": "analogy", "metric": "accuracy", "value": 0.125, "coverage": 0.75},
    ]  # fmt: skip
    assert [format_score(row) for row in score_rows(metrics)] == [
        "wordsim353      spearman +0.500  (coverage 75%)",
        "simlex999       spearman nan  (coverage 0%)",
        "analogy         accuracy +0.125  (coverage 75%)",
    ]
    # A manifest without metrics (an artefact of another tool): every row, no values.
    assert [(r["benchmark"], r["value"], r["coverage"]) for r in score_rows(None)] == [
        (b.name, None, None) for b in BENCHMARKS
    ]
    assert format_score(score_rows(None)[2]) == "analogy         accuracy -  (coverage -)"
