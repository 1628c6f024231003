"""Word similarity: human scores against cosine similarity, and nearest neighbours.

Similarity benchmarks (declared in `embedpipe.evaluate.benchmarks`) are files of
``word1<TAB>word2<TAB>score`` lines; the score is Spearman's rho between the human scores and
the cosines of the pairs whose words are both in the vocabulary. Words match as gensim's
``evaluate_word_pairs`` matches them: with ``case_insensitive``, both sides upper-cased and
the first (most frequent) of several case variants taken.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from embedpipe.schemas import SPECIAL_TOKENS

PairList = list[tuple[str, str, float]]


def read_pairs(path: str | os.PathLike[str], delimiter: str = "\t") -> PairList:
    """Read ``word1<TAB>word2<TAB>score`` lines (fields split at `delimiter`), skipping blanks
    and ``#`` comments.

    Raises ValueError naming the file and the 1-based line number of a malformed line, so a bad
    benchmark file fails loudly instead of silently shrinking the evaluation.
    """
    pairs: PairList = []
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split(delimiter)
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


def fold(word: str, case_insensitive: bool) -> str:
    """The form a word is matched by: upper-cased when `case_insensitive`, as gensim does."""
    return word.upper() if case_insensitive else word


def word_index(words: Iterable[str], case_insensitive: bool) -> dict[str, int]:
    """Map (optionally case-folded) words to their position; the first, most frequent, wins."""
    index: dict[str, int] = {}
    for i, word in enumerate(words):
        index.setdefault(fold(word, case_insensitive), i)
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


def pair_cosines(
    vectors: np.ndarray,
    vocab: Sequence[str],
    pairs: Sequence[tuple[str, str, float]],
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(human scores, cosines, pairs with an unknown word) of the pairs evaluated.

    A pair with a word missing from ``vocab`` is skipped, or with ``dummy4unknown`` kept with
    cosine 0 (gensim's option); either way it is counted as unknown.
    """
    check_vocab(vectors, vocab)
    index = word_index(vocab, case_insensitive)
    rows = [
        (index.get(fold(w1, case_insensitive), -1), index.get(fold(w2, case_insensitive), -1), h)
        for w1, w2, h in pairs
    ]
    kept = [r for r in rows if dummy4unknown or min(r[0], r[1]) >= 0]
    ids = np.array([r[:2] for r in kept], dtype=np.int64).reshape(-1, 2)
    human = np.array([r[2] for r in kept], dtype=np.float64)
    found = (ids >= 0).all(axis=1)
    cosine = np.zeros(len(kept), dtype=np.float64)
    if found.any():
        first, second = (unit_rows(np.asarray(vectors)[ids[found, k]]) for k in (0, 1))
        cosine[found] = np.einsum("ij,ij->i", first, second)
    return human, cosine, len(rows) - int(found.sum())


def evaluate_similarity(
    vectors: np.ndarray,
    vocab: Sequence[str],
    pairs: Sequence[tuple[str, str, float]],
    case_insensitive: bool = True,
) -> dict[str, float | int]:
    """Spearman correlation between human scores and cosine similarity on in-vocabulary pairs.

    Pairs with a word missing from ``vocab`` are skipped and counted in ``oov_rate`` (share of
    pairs skipped). Words are matched case-insensitively when ``case_insensitive`` (see
    `fold`). ``spearman`` is NaN when fewer than two pairs are found.
    """
    human, cosine, unknown = pair_cosines(vectors, vocab, pairs, case_insensitive)
    total = len(pairs)
    return {
        "spearman": spearman(human, cosine),
        "pairs": total,
        "found": len(human),
        "oov_rate": unknown / total if total else 0.0,
    }


Correlation = tuple[float, float]


def word_pair_correlations(
    vectors: np.ndarray,
    vocab: Sequence[str],
    pairs: Sequence[tuple[str, str, float]],
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
    source: object = "the pairs",
) -> tuple[Correlation, Correlation, float]:
    """gensim's ``evaluate_word_pairs`` result: ((Pearson r, p-value), (Spearman rho,
    p-value), percentage of pairs with an unknown word), over `pair_cosines`.

    ValueError naming `source` when fewer than two pairs can be scored.
    """
    human, cosine, unknown = pair_cosines(vectors, vocab, pairs, case_insensitive, dummy4unknown)
    if len(human) < 2:
        raise ValueError(f"{source}: {len(human)} scorable pairs, need at least 2")
    pearson = (
        float(np.corrcoef(human, cosine)[0, 1]) if np.ptp(human) and np.ptp(cosine) else math.nan
    )
    rho = spearman(human, cosine)
    oov = 100.0 * unknown / len(pairs)
    n = len(human)
    return (pearson, correlation_pvalue(pearson, n)), (rho, correlation_pvalue(rho, n)), oov


def correlation_pvalue(r: float, n: int) -> float:
    """Two-sided p-value of a correlation `r` over `n` pairs (Student's t with n - 2 degrees of
    freedom, as scipy's pearsonr and spearmanr give it): I_{df / (df + t^2)}(df / 2, 1 / 2)."""
    df = n - 2
    if math.isnan(r) or df <= 0:
        return math.nan
    if abs(r) >= 1.0:
        return 0.0
    return incomplete_beta(df / 2, 0.5, (1 - r * r))  # df / (df + t^2) == 1 - r^2


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction
    (modified Lentz), on the side of x where it converges fast."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - incomplete_beta(b, a, 1.0 - x)
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    return front * _beta_fraction(a, b, x) / a


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), evaluated by the modified Lentz method."""

    def guard(v: float) -> float:
        return v if abs(v) > 1e-300 else 1e-300

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 500):
        for term in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 / guard(1.0 + term * d)
            c = guard(1.0 + term / c)
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def nearest_neighbours(
    vectors: np.ndarray,
    vocab: Sequence[str],
    words: Sequence[str],
    k: int = 5,
    case_insensitive: bool = True,
) -> dict[str, list[tuple[str, float]]]:
    """The ``k`` most cosine-similar vocabulary entries for each word, for eyeballing a model.

    The word itself and SPECIAL_TOKENS are never returned; words not in ``vocab`` map to [].
    Results are keyed by the words as given and sorted by decreasing cosine.
    """
    check_vocab(vectors, vocab)
    index = word_index(vocab, case_insensitive)
    result: dict[str, list[tuple[str, float]]] = {w: [] for w in words}
    known = [w for w in words if fold(w, case_insensitive) in index]
    if not known or k <= 0:
        return result

    unit = unit_rows(vectors)
    query_ids = np.asarray([index[fold(w, case_insensitive)] for w in known], dtype=np.int64)
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
