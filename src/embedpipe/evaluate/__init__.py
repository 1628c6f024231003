"""Intrinsic evaluation of trained word embeddings (word similarity and analogies)."""

from embedpipe.evaluate.benchmarks import (
    ANALOGY_FILE,
    BENCHMARKS,
    DATA_DIR,
    PROBE_WORDS,
    evaluate_all,
    evaluate_analogy,
    evaluate_similarity,
    nearest_neighbours,
    read_analogies,
    read_pairs,
)

__all__ = [
    "ANALOGY_FILE",
    "BENCHMARKS",
    "DATA_DIR",
    "PROBE_WORDS",
    "evaluate_all",
    "evaluate_analogy",
    "evaluate_similarity",
    "nearest_neighbours",
    "read_analogies",
    "read_pairs",
]
