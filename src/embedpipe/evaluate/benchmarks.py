"""Intrinsic evaluation of word embeddings: word similarity and word analogy benchmarks.

The similarity benchmarks (WordSim-353, SimLex-999) correlate human scores with cosine
similarity; the analogy benchmark (Google's questions-words) scores 3CosAdd the way gensim's
``KeyedVectors.evaluate_word_analogies`` does, but batched through matrix products.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from embedpipe.schemas import SPECIAL_TOKENS

__all__ = [
    "BENCHMARKS",
    "DATA_DIR",
    "PROBE_WORDS",
    "ANALOGY_FILE",
    "evaluate_all",
    "evaluate_analogy",
    "evaluate_similarity",
    "nearest_neighbours",
    "read_analogies",
    "read_pairs",
]

DATA_DIR: Path = Path(str(resources.files(__package__ or "embedpipe.evaluate").joinpath("data")))
"""Folder holding the bundled benchmark files (see ``data/README.md`` for attribution)."""

BENCHMARKS: dict[str, Path] = {
    "wordsim353": DATA_DIR / "wordsim353.tsv",
    "simlex999": DATA_DIR / "simlex999.txt",
}
"""Word-similarity benchmark name -> bundled file of ``word1<TAB>word2<TAB>score`` lines."""

ANALOGY_FILE: Path = DATA_DIR / "questions-words.txt"
"""The bundled Google analogy test set."""

PROBE_WORDS: tuple[str, ...] = ("dog", "king", "water", "music", "red", "run", "computer", "good")
"""The fixed words whose nearest neighbours every evaluation report shows."""

PairList = list[tuple[str, str, float]]
Analogy = tuple[str, str, str, str, str]

_BATCH = 1024


def read_pairs(path: str | os.PathLike[str]) -> PairList:
    """Read ``word1<TAB>word2<TAB>score`` lines, skipping blanks and ``#`` comments.

    Raises ValueError naming the file and the 1-based line number of a malformed line, so a bad
    benchmark file fails loudly instead of silently shrinking the evaluation.
    """
    pairs: PairList = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 3 or not fields[0] or not fields[1]:
                raise ValueError(f"{path}:{lineno}: expected 'word1<TAB>word2<TAB>score': {line!r}")
            try:
                score = float(fields[2])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: score is not a number: {line!r}") from None
            pairs.append((fields[0], fields[1], score))
    return pairs


def read_analogies(path: str | os.PathLike[str] = ANALOGY_FILE) -> list[Analogy]:
    """Read a questions-words file into ``(section, a, b, c, d)`` tuples.

    ``: name`` lines start a section; every other non-blank line must hold four words. Raises
    ValueError naming the file and line number for a malformed line or a question before any
    section header.
    """
    questions: list[Analogy] = []
    section: str | None = None
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(":"):
                section = line[1:].strip()
                if not section:
                    raise ValueError(f"{path}:{lineno}: empty section name")
                continue
            words = line.split()
            if len(words) != 4:
                raise ValueError(f"{path}:{lineno}: expected four words 'a b c d': {line!r}")
            if section is None:
                raise ValueError(f"{path}:{lineno}: question before any ': section' header")
            questions.append((section, words[0], words[1], words[2], words[3]))
    return questions


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm; all-zero rows stay zero (cosine 0, not NaN)."""
    mat = np.asarray(vectors, dtype=np.float32)
    if mat.ndim != 2:
        raise ValueError(f"vectors must be a 2-D (vocab x dim) array, got shape {mat.shape}")
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    return mat / np.where(norms > 0, norms, 1.0)


def _check_vocab(vectors: np.ndarray, vocab: Sequence[str]) -> None:
    """Fail early when the vocabulary and the vector table disagree in length."""
    if len(vocab) != len(vectors):
        raise ValueError(f"vocab has {len(vocab)} entries but vectors has {len(vectors)} rows")


def _index(words: Iterable[str], lowercase: bool) -> dict[str, int]:
    """Map (optionally lower-cased) words to their position; the first, most frequent, wins."""
    index: dict[str, int] = {}
    for i, word in enumerate(words):
        index.setdefault(word.lower() if lowercase else word, i)
    return index


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho, NaN for fewer than two points or a constant input (without warnings)."""
    if len(x) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(x, y).statistic
    return float(rho)


def evaluate_similarity(
    vectors: np.ndarray,
    vocab: Sequence[str],
    pairs: Sequence[tuple[str, str, float]],
    lowercase: bool = True,
) -> dict[str, float | int]:
    """Spearman correlation between human scores and cosine similarity on in-vocabulary pairs.

    Pairs with a word missing from ``vocab`` are skipped and counted in ``oov_rate`` (share of
    pairs skipped). Words are lower-cased before lookup when ``lowercase`` (our vocabularies
    are lower-cased). ``spearman`` is NaN when fewer than two pairs are found.
    """
    _check_vocab(vectors, vocab)
    index = _index(vocab, lowercase)

    def key(word: str) -> str:
        return word.lower() if lowercase else word

    found = [
        (index[key(w1)], index[key(w2)], score)
        for w1, w2, score in pairs
        if key(w1) in index and key(w2) in index
    ]
    total = len(pairs)
    n = len(found)
    rho = math.nan
    if n:
        ids1 = np.fromiter((f[0] for f in found), dtype=np.int64, count=n)
        ids2 = np.fromiter((f[1] for f in found), dtype=np.int64, count=n)
        human = np.fromiter((f[2] for f in found), dtype=np.float64, count=n)
        unit = _unit_rows(vectors)
        cosine = np.einsum("ij,ij->i", unit[ids1], unit[ids2])
        rho = _spearman(human, cosine)
    return {
        "spearman": rho,
        "pairs": total,
        "found": n,
        "oov_rate": (total - n) / total if total else 0.0,
    }


def evaluate_analogy(
    vectors: np.ndarray,
    vocab: Sequence[str],
    questions: Sequence[Analogy],
    restrict: int = 30000,
    lowercase: bool = True,
) -> dict[str, float | int]:
    """3CosAdd analogy accuracy over a frequency-restricted vocabulary, as gensim computes it.

    Candidates are the first ``restrict`` vocabulary entries after dropping SPECIAL_TOKENS (the
    vocabulary is sorted by frequency). A question ``a : b :: c : d`` is answered only if all
    four words are candidates; the prediction is the candidate maximising cos(x, b - a + c) on
    unit-normalised vectors, with a, b and c excluded. Sections named ``gram*`` are syntactic,
    the rest semantic. Accuracies are correct / answered and 0.0 when nothing is answered;
    ``coverage`` is answered / questions.
    """
    _check_vocab(vectors, vocab)
    cand_ids = [i for i, w in enumerate(vocab) if w not in SPECIAL_TOKENS][: max(restrict, 0)]
    index = _index((vocab[i] for i in cand_ids), lowercase)
    unit = _unit_rows(np.asarray(vectors)[cand_ids]) if cand_ids else np.zeros((0, 1), np.float32)

    rows: list[tuple[int, int, int, int]] = []
    syntactic: list[bool] = []
    for section, *words in questions:
        keys = [w.lower() if lowercase else w for w in words]
        if all(k in index for k in keys):
            rows.append((index[keys[0]], index[keys[1]], index[keys[2]], index[keys[3]]))
            syntactic.append(section.startswith("gram"))

    answered = len(rows)
    correct = np.zeros(answered, dtype=bool)
    if answered:
        ids = np.asarray(rows, dtype=np.int64)
        for start in range(0, answered, _BATCH):
            a, b, c, d = ids[start : start + _BATCH].T
            query = unit[b] - unit[a] + unit[c]
            # The query norm is constant per row, so argmax of the dot product equals the
            # argmax of the cosine; no need to normalise the query.
            scores = query @ unit.T
            batch_rows = np.arange(len(a))
            for excluded in (a, b, c):
                scores[batch_rows, excluded] = -np.inf
            correct[start : start + _BATCH] = scores.argmax(axis=1) == d

    is_syn = np.asarray(syntactic, dtype=bool)

    def accuracy(mask: np.ndarray) -> float:
        n = int(mask.sum())
        return float(correct[mask].sum()) / n if n else 0.0

    n_questions = len(questions)
    return {
        "accuracy": accuracy(np.ones(answered, dtype=bool)),
        "semantic_accuracy": accuracy(~is_syn),
        "syntactic_accuracy": accuracy(is_syn),
        "coverage": answered / n_questions if n_questions else 0.0,
        "questions": n_questions,
        "answered": answered,
        "semantic_answered": int((~is_syn).sum()),
        "syntactic_answered": int(is_syn.sum()),
    }


def evaluate_all(
    vectors: np.ndarray,
    vocab: Sequence[str],
    restrict: int = 30000,
    lowercase: bool = True,
) -> dict[str, dict[str, float | int]]:
    """Run WordSim-353, SimLex-999 and the Google analogies on the bundled data files."""
    results = {
        name: evaluate_similarity(vectors, vocab, read_pairs(path), lowercase=lowercase)
        for name, path in BENCHMARKS.items()
    }
    results["analogy"] = evaluate_analogy(
        vectors, vocab, read_analogies(ANALOGY_FILE), restrict=restrict, lowercase=lowercase
    )
    return results


def nearest_neighbours(
    vectors: np.ndarray,
    vocab: Sequence[str],
    words: Sequence[str],
    k: int = 5,
    lowercase: bool = True,
) -> dict[str, list[tuple[str, float]]]:
    """The ``k`` most cosine-similar vocabulary entries for each word, for eyeballing a model.

    The word itself and SPECIAL_TOKENS are never returned; words not in ``vocab`` map to [].
    Results are keyed by the words as given and sorted by decreasing cosine.
    """
    _check_vocab(vectors, vocab)
    index = _index(vocab, lowercase)
    result: dict[str, list[tuple[str, float]]] = {w: [] for w in words}
    known = [w for w in words if (w.lower() if lowercase else w) in index]
    if not known or k <= 0:
        return result

    unit = _unit_rows(vectors)
    query_ids = np.asarray([index[w.lower() if lowercase else w] for w in known], dtype=np.int64)
    scores = unit[query_ids] @ unit.T
    special = np.fromiter((w in SPECIAL_TOKENS for w in vocab), dtype=bool, count=len(vocab))
    scores[:, special] = -np.inf
    scores[np.arange(len(known)), query_ids] = -np.inf

    n_valid = int((~special).sum()) - 1  # at most one self entry per row among the non-special
    top = min(k, max(n_valid, 0))
    if top == 0:
        return result
    part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    best_scores = np.take_along_axis(part_scores, order, axis=1)
    for row, word in enumerate(known):
        result[word] = [
            (vocab[j], float(s))
            for j, s in zip(best[row], best_scores[row], strict=True)
            if np.isfinite(s)
        ]
    return result
