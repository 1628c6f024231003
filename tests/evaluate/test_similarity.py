"""Tests for embedpipe.evaluate.similarity's Spearman correlation: values worked out by hand,
and agreement with scipy's on data with ties (the core install evaluates without scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedpipe.evaluate.similarity import average_ranks, spearman


def test_average_ranks_share_the_mean_rank_of_ties() -> None:
    ranks = average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0]))
    assert ranks.tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_spearman_by_hand() -> None:
    # ranks x: 1, 2.5, 2.5, 4; y: 1, 3, 2, 4 -> rho = 4.5 / sqrt(4.5 * 5)
    rho = spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0]))
    assert rho == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-15)
    assert spearman(np.arange(5.0), -(np.arange(5.0) ** 3)) == -1.0


@pytest.mark.parametrize(
    ("x", "y"),
    [([1.0], [2.0]), ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([1.0, math.nan, 3.0], [1.0, 2.0, 3.0])],
)
def test_spearman_is_nan_without_an_answer(x: list[float], y: list[float]) -> None:
    assert math.isnan(spearman(np.array(x), np.array(y)))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.floats(-1, 1, allow_nan=False)), min_size=2, max_size=40
    )
)
def test_spearman_matches_scipy(rows: list[tuple[int, float]]) -> None:
    stats = pytest.importorskip("scipy.stats")
    x = np.array([float(a) for a, _ in rows])  # few distinct values: many ties
    y = np.array([b for _, b in rows])
    ours = spearman(x, y)
    if len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
        assert math.isnan(ours)
        return
    assert ours == pytest.approx(float(stats.spearmanr(x, y).statistic), abs=1e-12)
