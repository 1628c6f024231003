"""Word analogies: 3CosAdd over unit vectors, as gensim's ``evaluate_word_analogies``
scores them, batched through matrix products."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from embedpipe.evaluate.similarity import check_vocab, unit_rows, word_index
from embedpipe.schemas import SPECIAL_TOKENS

Analogy = tuple[str, str, str, str, str]

_BATCH = 1024
RESTRICT = 30000
"""Analogy candidates: the most frequent words, as gensim restricts them by default."""


def read_analogies(path: str | os.PathLike[str]) -> list[Analogy]:
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


def _answer(unit: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For (a, b, c, d) rows of candidate ids: is d the 3CosAdd answer? Batched."""
    correct = np.zeros(len(ids), dtype=bool)
    for start in range(0, len(ids), _BATCH):
        a, b, c, d = ids[start : start + _BATCH].T
        query = unit[b] - unit[a] + unit[c]
        # The query norm is constant per row, so argmax of the dot product equals the
        # argmax of the cosine; no need to normalise the query.
        scores = query @ unit.T
        batch_rows = np.arange(len(a))
        for excluded in (a, b, c):
            scores[batch_rows, excluded] = -np.inf
        correct[start : start + _BATCH] = scores.argmax(axis=1) == d
    return correct


def evaluate_analogy(
    vectors: np.ndarray,
    vocab: Sequence[str],
    questions: Sequence[Analogy],
    restrict: int = RESTRICT,
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
    check_vocab(vectors, vocab)
    cand_ids = [i for i, w in enumerate(vocab) if w not in SPECIAL_TOKENS][: max(restrict, 0)]
    index = word_index((vocab[i] for i in cand_ids), lowercase)
    unit = unit_rows(np.asarray(vectors)[cand_ids]) if cand_ids else np.zeros((0, 1), np.float32)

    rows: list[tuple[int, int, int, int]] = []
    syntactic: list[bool] = []
    for section, *words in questions:
        keys = [w.lower() if lowercase else w for w in words]
        if all(k in index for k in keys):
            rows.append((index[keys[0]], index[keys[1]], index[keys[2]], index[keys[3]]))
            syntactic.append(section.startswith("gram"))

    answered = len(rows)
    correct = _answer(unit, np.asarray(rows, dtype=np.int64).reshape(-1, 4))

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
