"""Intrinsic evaluation of trained word embeddings (word similarity and analogy), with the
registry of the benchmarks every artefact is scored on (`BENCHMARKS`)."""

from embedpipe.evaluate.analogy import evaluate_analogy, read_analogies
from embedpipe.evaluate.benchmarks import (
    ANALOGY_RESTRICT,
    BENCHMARKS,
    DATA_DIR,
    PROBE_WORDS,
    Benchmark,
    benchmark,
    evaluate_all,
    format_score,
    probe_neighbours,
    score_rows,
)
from embedpipe.evaluate.similarity import evaluate_similarity, nearest_neighbours, read_pairs

__all__ = [
    "ANALOGY_RESTRICT",
    "BENCHMARKS",
    "DATA_DIR",
    "PROBE_WORDS",
    "Benchmark",
    "benchmark",
    "evaluate_all",
    "evaluate_analogy",
    "evaluate_similarity",
    "format_score",
    "nearest_neighbours",
    "probe_neighbours",
    "read_analogies",
    "read_pairs",
    "score_rows",
]
