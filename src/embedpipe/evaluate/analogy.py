"""Word analogies: 3CosAdd over unit vectors, as gensim's ``evaluate_word_analogies``
scores them, batched through matrix products."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from embedpipe.evaluate.similarity import check_vocab, fold, unit_rows, word_index
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


def _answer(unit: np.ndarray, ids: np.ndarray, group: np.ndarray) -> np.ndarray:
    """For (a, b, c, d) rows of candidate ids: is d the 3CosAdd answer? Batched.

    `group[j]` is the id of candidate j's folded form (its first case variant): a candidate
    in the group of a, b or c is never the answer, and one in d's group is right, as in
    gensim, which compares the folded words.
    """
    correct = np.zeros(len(ids), dtype=bool)
    variants = np.flatnonzero(group != np.arange(len(group)))
    for start in range(0, len(ids), _BATCH):
        a, b, c, d = ids[start : start + _BATCH].T
        query = unit[b] - unit[a] + unit[c]
        # The query norm is constant per row, so argmax of the dot product equals the
        # argmax of the cosine; no need to normalise the query.
        scores = query @ unit.T
        batch_rows = np.arange(len(a))
        for excluded in (a, b, c):
            scores[batch_rows, excluded] = -np.inf
        if len(variants):
            of = group[variants]
            hit = (of == a[:, None]) | (of == b[:, None]) | (of == c[:, None])
            scores[:, variants] = np.where(hit, -np.inf, scores[:, variants])
        correct[start : start + _BATCH] = group[scores.argmax(axis=1)] == d
    return correct


def answer_analogies(
    vectors: np.ndarray,
    vocab: Sequence[str],
    questions: Sequence[Analogy],
    restrict: int = RESTRICT,
    case_insensitive: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(answered, correct): boolean masks over `questions`, by 3CosAdd among candidates.

    Candidates are the first ``restrict`` vocabulary entries after dropping SPECIAL_TOKENS (the
    vocabulary is sorted by frequency). A question ``a : b :: c : d`` is answered only if all
    four words are candidates (matched by `fold`, the first case variant taking the word); the
    prediction is the candidate maximising cos(x, b - a + c) on unit-normalised vectors, with
    a, b and c (and their case variants) excluded.
    """
    check_vocab(vectors, vocab)
    cand_ids = [i for i, w in enumerate(vocab) if w not in SPECIAL_TOKENS][: max(restrict, 0)]
    words = [vocab[i] for i in cand_ids]
    index = word_index(words, case_insensitive)
    group = np.array([index[fold(w, case_insensitive)] for w in words], dtype=np.int64)
    unit = unit_rows(np.asarray(vectors)[cand_ids]) if cand_ids else np.zeros((0, 1), np.float32)

    rows: list[tuple[int, ...]] = []
    answered = np.zeros(len(questions), dtype=bool)
    for q, (_, *four) in enumerate(questions):
        keys = [fold(w, case_insensitive) for w in four]
        if all(k in index for k in keys):
            rows.append(tuple(index[k] for k in keys))
            answered[q] = True
    correct = np.zeros(len(questions), dtype=bool)
    correct[answered] = _answer(unit, np.asarray(rows, dtype=np.int64).reshape(-1, 4), group)
    return answered, correct


def evaluate_analogy(
    vectors: np.ndarray,
    vocab: Sequence[str],
    questions: Sequence[Analogy],
    restrict: int = RESTRICT,
    case_insensitive: bool = True,
) -> dict[str, float | int]:
    """3CosAdd analogy accuracy over a frequency-restricted vocabulary, as gensim computes it
    (`answer_analogies`).

    Sections named ``gram*`` are syntactic, the rest semantic. Accuracies are correct /
    answered and 0.0 when nothing is answered; ``coverage`` is answered / questions.
    """
    answered, correct = answer_analogies(vectors, vocab, questions, restrict, case_insensitive)
    syntactic = np.array([q[0].startswith("gram") for q in questions], dtype=bool)

    def accuracy(mask: np.ndarray) -> float:
        n = int((mask & answered).sum())
        return float((correct & mask).sum()) / n if n else 0.0

    n_questions = len(questions)
    n_answered = int(answered.sum())
    return {
        "accuracy": accuracy(np.ones(n_questions, dtype=bool)),
        "semantic_accuracy": accuracy(~syntactic),
        "syntactic_accuracy": accuracy(syntactic),
        "coverage": n_answered / n_questions if n_questions else 0.0,
        "questions": n_questions,
        "answered": n_answered,
        "semantic_answered": int((answered & ~syntactic).sum()),
        "syntactic_answered": int((answered & syntactic).sum()),
    }


Section = dict[str, Any]


def analogy_sections(
    vectors: np.ndarray,
    vocab: Sequence[str],
    questions: Sequence[Analogy],
    restrict: int = RESTRICT,
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
) -> tuple[float, list[Section]]:
    """gensim's ``evaluate_word_analogies`` result over `answer_analogies`: (accuracy,
    sections), one {"section", "correct", "incorrect"} dict per run of questions of a section
    and a last one, "Total accuracy", over all. The lists hold (a, b, c, d) as matched
    (upper-cased when `case_insensitive`); a question with an unknown word is left out, or
    with `dummy4unknown` counted as incorrect. Accuracy is 0.0 when nothing is scored.
    """
    answered, correct = answer_analogies(vectors, vocab, questions, restrict, case_insensitive)
    sections: list[Section] = []
    for q, (name, *four) in enumerate(questions):
        if not sections or sections[-1]["section"] != name:
            sections.append({"section": name, "correct": [], "incorrect": []})
        if answered[q] or dummy4unknown:
            words = tuple(fold(w, case_insensitive) for w in four)
            sections[-1]["correct" if correct[q] else "incorrect"].append(words)
    total: Section = {
        "section": "Total accuracy",
        "correct": [t for s in sections for t in s["correct"]],
        "incorrect": [t for s in sections for t in s["incorrect"]],
    }
    scored = len(total["correct"]) + len(total["incorrect"])
    return (len(total["correct"]) / scored if scored else 0.0), [*sections, total]
