"""The benchmarks every artefact is scored on, declared once.

`BENCHMARKS` is the registry: each `Benchmark` names its key in the manifest's metrics, its
headline metric (Spearman's rho or accuracy), its bundled data file, the function that runs
it and how its coverage is read from its result. Publishing evaluates every declared
benchmark (`evaluate_all`); diffs, reports, the flow's tables and the CLI read the scores
back through the same entries (`score_rows`, `Benchmark.read`), so a benchmark added here
shows up everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from embedpipe.evaluate.analogy import RESTRICT, evaluate_analogy, read_analogies
from embedpipe.evaluate.similarity import evaluate_similarity, nearest_neighbours, read_pairs

if TYPE_CHECKING:
    from embedpipe.artefacts.manifest import Metrics

__all__ = [
    "ANALOGY_RESTRICT",
    "BENCHMARKS",
    "DATA_DIR",
    "PROBE_WORDS",
    "Benchmark",
    "benchmark",
    "evaluate_all",
    "format_score",
    "probe_neighbours",
    "score_rows",
]

DATA_DIR: Path = Path(str(resources.files(__package__ or "embedpipe.evaluate").joinpath("data")))
"""Folder holding the bundled benchmark files (see ``data/README.md`` for attribution)."""

PROBE_WORDS: tuple[str, ...] = ("dog", "king", "water", "music", "red", "run", "computer", "good")
"""The fixed words whose nearest neighbours every evaluation report shows."""

ANALOGY_RESTRICT = RESTRICT

Result = dict[str, float | int]
Runner = Callable[[np.ndarray, Sequence[str], Path, bool, int], Result]


def run_similarity(
    vectors: np.ndarray, vocab: Sequence[str], data: Path, case_insensitive: bool, restrict: int
) -> Result:
    """A word-similarity benchmark on a pairs file (`restrict` does not apply)."""
    return evaluate_similarity(vectors, vocab, read_pairs(data), case_insensitive)


def run_analogy(
    vectors: np.ndarray, vocab: Sequence[str], data: Path, case_insensitive: bool, restrict: int
) -> Result:
    """An analogy benchmark on a questions-words file, among the `restrict` first words."""
    questions = read_analogies(data)
    return evaluate_analogy(vectors, vocab, questions, restrict, case_insensitive)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its data is, how it runs, how its result is read.

    `name` is its key in `Metrics.scores` (and in the JSON of a manifest's metrics);
    `metric` the result field that is its score; `coverage` the result field giving the share
    of the benchmark that the vocabulary covered, read as 1 - value when `coverage_missing`
    (an out-of-vocabulary rate); `fields` what a diff compares, score first; `kind`
    "similarity" (word pairs, so words outside a sub-word vocabulary may be composed of their
    pieces) or "analogy" (answered among whole words only).
    """

    name: str
    title: str
    kind: Literal["similarity", "analogy"]
    metric: Literal["spearman", "accuracy"]
    data: Path
    run: Runner
    coverage: str
    coverage_missing: bool
    fields: tuple[str, ...]

    def evaluate(
        self,
        vectors: np.ndarray,
        vocab: Sequence[str],
        case_insensitive: bool = True,
        restrict: int = ANALOGY_RESTRICT,
    ) -> Result:
        """Run the benchmark on its bundled data."""
        return self.run(vectors, vocab, self.data, case_insensitive, restrict)

    def words(self) -> set[str]:
        """The lower-cased words of a similarity benchmark's pairs (empty for analogies)."""
        if self.kind != "similarity":
            return set()
        return {w.lower() for pair in read_pairs(self.data) for w in pair[:2]}

    def read(self, metrics: Metrics | None, field: str | None = None) -> float | None:
        """metrics.scores[name][field] (default: the score) as a float, None when absent."""
        table = metrics.scores.get(self.name) if metrics is not None else None
        value = (table or {}).get(field or self.metric)
        return None if value is None else float(value)

    def covered(self, metrics: Metrics | None) -> float | None:
        """The share of the benchmark the vocabulary covered, None when absent."""
        value = self.read(metrics, self.coverage)
        if value is None:
            return None
        return 1.0 - value if self.coverage_missing else value


SIMILARITY_FIELDS = ("spearman", "oov_rate")
ANALOGY_FIELDS = ("accuracy", "semantic_accuracy", "syntactic_accuracy", "coverage")
similarity = partial(
    Benchmark, kind="similarity", metric="spearman", run=run_similarity,
    coverage="oov_rate", coverage_missing=True, fields=SIMILARITY_FIELDS,
)  # fmt: skip

BENCHMARKS: tuple[Benchmark, ...] = (
    similarity(name="wordsim353", title="WordSim-353", data=DATA_DIR / "wordsim353.tsv"),
    similarity(name="simlex999", title="SimLex-999", data=DATA_DIR / "simlex999.txt"),
    Benchmark(
        name="analogy", title="Google analogy", kind="analogy", metric="accuracy",
        data=DATA_DIR / "questions-words.txt", run=run_analogy, coverage="coverage",
        coverage_missing=False, fields=ANALOGY_FIELDS,
    ),
)  # fmt: skip
"""Every benchmark an artefact is scored on, in the order reports show them."""


def benchmark(name: str) -> Benchmark:
    """The declared benchmark called `name`; KeyError naming the declared ones."""
    for bench in BENCHMARKS:
        if bench.name == name:
            return bench
    raise KeyError(f"no benchmark {name!r} (declared: {', '.join(b.name for b in BENCHMARKS)})")


def evaluate_all(
    vectors: np.ndarray,
    vocab: Sequence[str],
    restrict: int = ANALOGY_RESTRICT,
    case_insensitive: bool = True,
) -> dict[str, Result]:
    """Every declared benchmark on its bundled data: {benchmark name: result}."""
    return {b.name: b.evaluate(vectors, vocab, case_insensitive, restrict) for b in BENCHMARKS}


def probe_neighbours(
    vectors: np.ndarray, vocab: Sequence[str], k: int = 8
) -> dict[str, list[list[str | float]]]:
    """The probe words' k nearest neighbours as the manifest records them:
    {word: [[token, cosine rounded to 4 places], ...]} ([] for a word not in `vocab`)."""
    found = nearest_neighbours(vectors, vocab, PROBE_WORDS, k=k)
    return {w: [[t, round(s, 4)] for t, s in items] for w, items in found.items()}


def score_rows(metrics: Metrics | None) -> list[dict[str, Any]]:
    """One row per declared benchmark, for tables and summaries:
    {"benchmark", "metric", "value", "coverage"}; value and coverage are None when the
    metrics lack the benchmark, value NaN when it could not be computed."""
    return [
        {
            "benchmark": b.name,
            "metric": b.metric,
            "value": b.read(metrics),
            "coverage": b.covered(metrics),
        }
        for b in BENCHMARKS
    ]


def format_score(row: Mapping[str, Any]) -> str:
    """One `score_rows` row as a line of text: "wordsim353  spearman +0.312  (coverage 84%)"."""
    value, coverage = row.get("value"), row.get("coverage")
    shown = "-" if value is None else "nan" if math.isnan(value) else f"{value:+.3f}"
    share = "-" if coverage is None else f"{coverage:.0%}"
    return f"{row['benchmark']:15s} {row['metric']} {shown}  (coverage {share})"
