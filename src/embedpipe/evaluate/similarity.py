"""Word similarity: human scores against cosine similarity, and nearest neighbours.

Similarity benchmarks (declared in `embedpipe.evaluate.benchmarks`) are files of
``word1<TAB>word2<TAB>score`` lines; the score is Spearman's rho between the human scores and
the cosines of the pairs whose words are both in the vocabulary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from embedpipe.schemas import SPECIAL_TOKENS

PairList = list[tuple[str, str, float]]


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


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm; all-zero rows stay zero (cosine 0, not NaN)."""
    mat = np.asarray(vectors, dtype=np.float32)
    if mat.ndim != 2:
        raise ValueError(f"vectors must be a 2-D (vocab x dim) array, got shape {mat.shape}")
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    return mat / np.where(norms > 0, norms, 1.0)


def check_vocab(vectors: np.ndarray, vocab: Sequence[str]) -> None:
    """Fail early when the vocabulary and the vector table disagree in length."""
    if len(vocab) != len(vectors):
        raise ValueError(f"vocab has {len(vocab)} entries but vectors has {len(vectors)} rows")


def word_index(words: Iterable[str], lowercase: bool) -> dict[str, int]:
    """Map (optionally lower-cased) words to their position; the first, most frequent, wins."""
    index: dict[str, int] = {}
    for i, word in enumerate(words):
        index.setdefault(word.lower() if lowercase else word, i)
    return index


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the values of x, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the rank of the last copy of each distinct value
    return (last - (counts - 1) / 2.0)[inverse.ravel()]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson's r of the average ranks, as scipy.stats.spearmanr computes
    it, in numpy so that evaluation needs no scipy); NaN for fewer than two points, a NaN
    input or a constant one."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.isnan(x).any() or np.isnan(y).any():
        return math.nan
    rx = average_ranks(x)
    ry = average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    norm = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return math.nan if norm == 0.0 else float(np.clip(rx @ ry / norm, -1.0, 1.0))


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
    check_vocab(vectors, vocab)
    index = word_index(vocab, lowercase)

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
        unit = unit_rows(vectors)
        cosine = np.einsum("ij,ij->i", unit[ids1], unit[ids2])
        rho = spearman(human, cosine)
    return {
        "spearman": rho,
        "pairs": total,
        "found": n,
        "oov_rate": (total - n) / total if total else 0.0,
    }


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
    check_vocab(vectors, vocab)
    index = word_index(vocab, lowercase)
    result: dict[str, list[tuple[str, float]]] = {w: [] for w in words}
    known = [w for w in words if (w.lower() if lowercase else w) in index]
    if not known or k <= 0:
        return result

    unit = unit_rows(vectors)
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
