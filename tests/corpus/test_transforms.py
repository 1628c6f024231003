"""The Arrow/numpy kernels of the stages against plain-Python references (no Spark)."""

from collections import defaultdict

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from embedpipe import schemas as S
from embedpipe.corpus.cooccur import PairCounter, count_pairs
from embedpipe.corpus.encode import encode_arrow

WORDS = ["a", "b", "c", "d", "e", "zz"]
VOCAB = [*S.SPECIAL_TOKENS, "a", "b", "c", "d"]  # "e" and "zz" are out of vocabulary
N_SPECIAL = len(S.SPECIAL_TOKENS)


def reference_cooccur(sequences: list[list[int]], window: int) -> dict[tuple[int, int], float]:
    counts: dict[tuple[int, int], float] = defaultdict(float)
    for ids in sequences:
        for i, left in enumerate(ids):
            for j in range(i + 1, min(i + window + 1, len(ids))):
                right = ids[j]
                if left >= N_SPECIAL and right >= N_SPECIAL:
                    counts[left, right] += 1.0 / (j - i)
                    counts[right, left] += 1.0 / (j - i)
    return dict(counts)


id_lists = st.lists(st.lists(st.integers(0, 12), max_size=15), max_size=12)


@settings(max_examples=200, deadline=None)
@given(id_lists, st.integers(1, 6), st.sampled_from([0, 8, 4096]))
def test_count_pairs_matches_reference(
    sequences: list[list[int]], window: int, dense_ids: int
) -> None:
    """All pairs sparse (0), mixed dense and sparse (8), all dense (4096)."""
    ids = pa.array(sequences, pa.list_(pa.int32()))
    rows, cols, weights = count_pairs(ids, window, dense_ids=dense_ids)
    got = {(int(r), int(c)): w for r, c, w in zip(rows, cols, weights, strict=True)}
    want = reference_cooccur(sequences, window)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert np.isclose(got[key], value, rtol=1e-12)


def test_count_pairs_on_a_sliced_batch() -> None:
    ids = pa.array([[5, 6], [7, 8, 9], [10, 11]], pa.list_(pa.int32())).slice(1, 1)
    rows, cols, weights = count_pairs(ids, 2)
    got = {(int(r), int(c)): w for r, c, w in zip(rows, cols, weights, strict=True)}
    assert got == {(7, 8): 1.0, (8, 7): 1.0, (8, 9): 1.0, (9, 8): 1.0, (7, 9): 0.5, (9, 7): 0.5}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS), max_size=8), max_size=10), st.booleans())
def test_encode_matches_reference(token_lists: list[list[str]], drop: bool) -> None:
    index = {t: i for i, t in enumerate(VOCAB)}
    got = encode_arrow(
        pa.array(token_lists, pa.list_(pa.string())), pa.array(VOCAB), "drop" if drop else "unk"
    )
    if drop:
        want = [[index[t] for t in tokens if t in index] for tokens in token_lists]
    else:
        want = [[index.get(t, S.UNK_ID) for t in tokens] for tokens in token_lists]
    assert got.type == pa.list_(pa.int32())
    assert got.to_pylist() == want


def test_pair_counter_merges_runs_across_flushes() -> None:
    """Tiny flushes force many sorted runs and merges; the sums still match the reference."""
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(5, 60, size=rng.integers(0, 20))) for _ in range(300)]
    counter = PairCounter(3, flush_pairs=50, dense_ids=20)
    for a in range(0, 300, 7):
        counter.add(pa.array(sequences[a : a + 7], pa.list_(pa.int32())))
    table = pa.Table.from_batches(list(counter.drain()))
    keys = list(zip(table.column("row").to_pylist(), table.column("col").to_pylist(), strict=True))
    assert keys == sorted(keys)
    got = dict(zip(keys, table.column("units").to_numpy() / 6, strict=True))
    want = reference_cooccur(sequences, 3)
    assert got.keys() == want.keys()
    assert all(np.isclose(got[k], v) for k, v in want.items())
