"""The report's pictures: a training curve that always shows its points, and a word map
whose labels go to informative words spread over it (real word counts of the sample)."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from embedpipe.artefacts import Embeddings
from embedpipe.evaluate.plots import (
    LABEL_SPACING,
    LABELLED_WORDS,
    SKIPPED_FREQUENT,
    choose_labels,
    frequent_words,
    is_word,
    plot_projection,
    plot_training,
    project,
)
from embedpipe.schemas import SPECIAL_TOKENS
from embedpipe.text.tokenizer import tokenize_arrow

SAMPLE = Path(__file__).parents[2] / "data" / "sample" / "wordnet-glosses.txt.gz"
# Function words of English; in the sample's counts all of them are among the 100 most frequent.
STOPWORDS = {
    "the", "a", "of", "or", "in", "and", "to", "an", "that", "with", "by", "for", "is", "as",
    "on", "from", "who", "was", "he", "his", "at", "not", "be", "are", "it", "which", "into",
    "its", "she", "her", "they", "this", "has", "have", "but", "their",
}  # fmt: skip


@pytest.fixture(scope="module")
def glosses() -> Embeddings:
    """The sample corpus's vocabulary with its real counts (tokenized as the pipeline does),
    specials first; random unit vectors."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        tokens = tokenize_arrow(pa.array(f.read().splitlines()))
    counts = pc.value_counts(pc.list_flatten(tokens))
    pairs = sorted(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True),
        key=lambda p: (-p[1], p[0]),
    )
    vocab = [*SPECIAL_TOKENS, *(w for w, _ in pairs)]
    counts = np.array([0] * len(SPECIAL_TOKENS) + [c for _, c in pairs])
    vectors = np.random.default_rng(0).standard_normal((len(vocab), 16)).astype(np.float32)
    return Embeddings.from_arrays(vocab, vectors, counts)


def test_labels_are_informative_words_spread_over_the_map(glosses: Embeddings) -> None:
    ids = frequent_words(glosses)
    tokens = [glosses.vocab[i] for i in ids]
    assert set(tokens[:SKIPPED_FREQUENT]) >= STOPWORDS  # they are on the map, not labelled
    coords, _ = project(glosses.normed[ids])
    labelled = choose_labels(tokens, coords)
    words = [tokens[row] for row in labelled]
    assert len(words) >= LABELLED_WORDS // 2 and len(set(words)) == len(words)
    assert not STOPWORDS & set(words)
    assert all(row >= SKIPPED_FREQUENT and is_word(tokens[row]) for row in labelled)
    # Spread: no two labels closer than the spacing; some in every quadrant of the map.
    diagonal = np.linalg.norm(coords.max(axis=0) - coords.min(axis=0))
    closest = min(
        np.linalg.norm(coords[a] - coords[b]) for a, b in itertools.combinations(labelled, 2)
    )
    assert closest >= LABEL_SPACING * diagonal
    quadrants = {(x > 0, y > 0) for x, y in coords[labelled]}
    assert len(quadrants) == 4
    # Taken in frequency order: the first candidate far enough from the others is labelled.
    assert labelled[0] == next(
        r for r in range(SKIPPED_FREQUENT, len(tokens)) if is_word(tokens[r])
    )


def test_the_map_draws_its_labels(glosses: Embeddings, tmp_path: Path) -> None:
    drawn, labels = plot_projection(glosses, tmp_path / "map.png")
    assert drawn == 300 and labels and not STOPWORDS & set(labels)
    assert (tmp_path / "map.png").stat().st_size > 10_000


def test_labels_of_a_small_vocabulary_and_non_words() -> None:
    """Under 300 words a third is skipped at most; punctuation, digits, one letter never."""
    tokens = ["the", "of", ",", "cat", "7", "\u2581dog", "x", "42nd"]
    coords = np.array([[0, 0], [1, 0], [0, 1], [5, 5], [9, 0], [-5, -5], [0, 9], [-9, 0]], float)
    assert [tokens[r] for r in choose_labels(tokens, coords)] == ["cat", "\u2581dog", "42nd"]
    assert choose_labels([], np.zeros((0, 2))) == []


def test_a_curve_of_few_points_marks_them_and_skips_missing_values(tmp_path: Path) -> None:
    records = [
        {"step": 0, "loss": None, "lr": 0.025, "heldout_loss": 3.4},  # before training
        {"step": 1, "loss": 4.1, "lr": 0.025, "words_per_sec": 900},
        {"step": 50, "loss": 2.0, "lr": 0.013, "words_per_sec": 1000},
        {"step": 95, "loss": 1.5, "lr": 0.0001, "words_per_sec": 1100, "heldout_loss": 1.9},
    ]
    fig = plot_training(records, tmp_path / "loss.png")
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert list(lines["loss"].get_xdata()) == [1, 50, 95]
    assert list(lines["loss"].get_ydata()) == [4.1, 2.0, 1.5]
    assert list(lines["held-out loss"].get_xdata()) == [0, 95]
    assert list(lines["learning rate"].get_xdata()) == [0, 1, 50, 95]
    assert all(line.get_marker() == "o" for line in lines.values())
    many = [{"step": s, "loss": 1.0 / s} for s in range(1, 200)]
    assert plot_training(many, tmp_path / "many.png").axes[0].get_lines()[0].get_marker() == "None"


def test_frequent_words_skip_specials_and_follow_counts() -> None:
    tokens = [*SPECIAL_TOKENS, "rare", "common", "mid", "tie1", "tie2"]
    counts = np.array([0, 99, 0, 0, 0, 1, 50, 10, 5, 5])  # [UNK] is frequent but special
    emb = Embeddings.from_arrays(tokens, np.ones((10, 2)), counts)
    assert [tokens[i] for i in frequent_words(emb, 4)] == ["common", "mid", "tie1", "tie2"]
    assert len(frequent_words(emb)) == 5


def test_projection_finds_the_main_axes() -> None:
    rng = np.random.default_rng(0)
    # Points spread 10x more along (1, 1, 0) than along (0, 0, 1), with no other variance.
    x = rng.standard_normal((200, 1)) * 10 * np.array([[1, 1, 0]]) / np.sqrt(2)
    x = x + rng.standard_normal((200, 1)) * np.array([[0, 0, 1]]) + 5.0
    coords, share = project(x)
    assert coords.shape == (200, 2)
    np.testing.assert_allclose(coords.mean(axis=0), 0.0, atol=1e-9)
    assert share[0] == pytest.approx(100 / 101, abs=0.02) and share.sum() == pytest.approx(1.0)
    # PC1 is (1, 1, 0) / sqrt(2) with a positive sign: coordinates are the centred projections.
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(
        coords[:, 0], centred @ (np.array([1, 1, 0]) / np.sqrt(2)), atol=0.05
    )
