"""The Arrow/numpy kernels of the stages against plain-Python references (no Spark)."""

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedpipe import schemas as S
from embedpipe.corpus import kernels
from embedpipe.corpus.cooccur import (
    PairCounter,
    block_rows,
    count_pairs,
    group_bounds,
    merge_blocks,
    weight_scale,
)
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
@given(id_lists, st.integers(1, 6), st.sampled_from([0, 6, 40, 1 << 20]))
def test_count_pairs_matches_reference(
    sequences: list[list[int]], window: int, dense_cells: int
) -> None:
    """No dense table (0), a few dense cells (6, 40: most pairs sparse), all pairs dense."""
    ids = pa.array(sequences, pa.list_(pa.int32()))
    rows, cols, weights = count_pairs(ids, window, vocab_size=13, dense_cells=dense_cells)
    got = {(int(r), int(c)): w for r, c, w in zip(rows, cols, weights, strict=True)}
    want = reference_cooccur(sequences, window)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert np.isclose(got[key], value, rtol=1e-12)
    keys = list(zip(rows.tolist(), cols.tolist(), strict=True))
    assert keys == sorted(keys)


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
    """Tiny buffers force many sorted runs and merges; the sums and the shard layout hold."""
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(5, 60, size=rng.integers(0, 20))) for _ in range(300)]
    counter = PairCounter(3, vocab_size=60, dense_cells=30, sparse_keys=7)
    for a in range(0, 300, 7):
        counter.add(pa.array(sequences[a : a + 7], pa.list_(pa.int32())))
    keys, units, starts = counter.drain(shards=4)
    rows, cols = keys >> 32, keys & 0xFFFFFFFF
    for shard in range(4):
        part = list(
            zip(
                rows[starts[shard] : starts[shard + 1]],
                cols[starts[shard] : starts[shard + 1]],
                strict=True,
            )
        )
        assert part == sorted(part)
        assert all(r % 4 == shard for r, _ in part)
    got = dict(zip(zip(rows.tolist(), cols.tolist(), strict=True), units / 6, strict=True))
    want = reference_cooccur(sequences, 3)
    assert got.keys() == want.keys()
    assert all(np.isclose(got[k], v) for k, v in want.items())
    assert counter.drain()[0].size == 0  # drained: it starts afresh


def test_full_dense_cells_spill_to_the_sparse_runs() -> None:
    """A dense cell that would pass its limit stops growing; the further units of its pair
    go to the sparse keys, and the sum stays exact."""
    counter = PairCounter(2, vocab_size=8)  # L = 2: distance 1 adds 2 units
    counter.room[:] = 5  # a cell takes units while it holds at most 5: three adjacent pairs
    counter.add(pa.array([[5, 6]] * 10, pa.list_(pa.int32())))
    assert counter.dense.max() == 6 and counter.sparse_pairs + counter.n_keys > 0
    keys, units, _ = counter.drain()
    assert keys.tolist() == [(5 << 32) | 6, (6 << 32) | 5]
    assert units.tolist() == [20, 20]


def test_ids_outside_the_vocabulary_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        PairCounter(2, vocab_size=8).add(pa.array([[5, 8]], pa.list_(pa.int32())))


def test_dense_layout_is_a_product_bounded_triangle() -> None:
    lim, base, cells = kernels.dense_layout(50, 200)
    a = np.arange(50)
    assert cells == int((lim - a).sum()) <= 200
    assert np.all(lim >= a) and np.all(np.diff(lim[lim > a]) <= 0)
    index = [base[i] + j for i in range(50) for j in range(i, lim[i])]
    assert sorted(index) == list(range(cells))  # every cell has one place


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 40), max_size=12), max_size=20),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 5),
)
def test_blocks_carry_runs_to_their_groups(
    sequences: list[list[int]], window: int, shards: int, block_entries: int
) -> None:
    """Two map runs cut into (shard, group) blocks, shuffled, then merged per group: the
    merged groups are the whole matrix, each sorted and in its shard and row range."""
    import embedpipe.corpus.cooccur as co

    counts = np.bincount([i for s in sequences for i in s], minlength=41)
    bounds = group_bounds(counts, window, shards, group_entries=20)
    groups = len(bounds) - 1
    old_size, co.BLOCK_ENTRIES = co.BLOCK_ENTRIES, block_entries
    try:
        batches = []
        for run, half in enumerate((sequences[::2], sequences[1::2])):
            counter = PairCounter(window, vocab_size=41, dense_cells=50)
            counter.add(pa.array(half, pa.list_(pa.int32())))
            batches += block_rows(*counter.drain(shards), bounds, run)
    finally:
        co.BLOCK_ENTRIES = old_size
    table = pa.Table.from_batches(batches[::-1]) if batches else None  # arrival order varies
    got = {}
    for pid in range(shards * groups):
        if table is None:
            break
        shard, group = divmod(pid, groups)
        part = table.filter(pa.compute.equal(table.column("pid"), pid))
        if part.num_rows == 0:
            continue
        keys, units = merge_blocks(part)
        rows = keys >> 32
        assert np.all(np.diff(keys) > 0)
        assert np.all(rows % shards == shard)
        assert np.all((rows >= bounds[group]) & (rows < bounds[group + 1]))
        got.update(zip(keys.tolist(), (units / weight_scale(window)).tolist(), strict=True))
    want = {(r << 32) | c: w for (r, c), w in reference_cooccur(sequences, window).items()}
    assert got.keys() == want.keys()
    assert all(np.isclose(got[k], v) for k, v in want.items())


# In a fresh interpreter: the kernels' signatures after `warm_up`, then after a map task's
# and a reduce task's work on ids read from Parquet, as the stage's tasks read them.
_WARM_UP_THEN_TASKS = """
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from embedpipe.corpus import cooccur, kernels

def signatures():
    return {n: len(f.signatures) for n in dir(kernels) if hasattr(f := getattr(kernels, n), "signatures")}

cooccur.warm_up()
warm = signatures()
rng = np.random.default_rng(0)
lists = [rng.integers(0, 300, int(n)).tolist() for n in rng.integers(0, 40, 200)]
pq.write_table(pa.table({"ids": pa.array(lists, pa.list_(pa.int32()))}), sys.argv[1])
ids = pq.read_table(sys.argv[1]).column("ids").combine_chunks()
counter = cooccur.PairCounter(10, 300, dense_cells=1000, sparse_keys=500)
counter.add(ids)
keys, units, starts = counter.drain(4)
blocks = list(cooccur.block_rows(keys, units, starts, [0, 150, 300], 0))
cooccur.merge_blocks(pa.Table.from_batches(blocks))
public = [v for n, v in warm.items() if not n.startswith("_")]  # not the inlined helpers
print(warm == signatures() and all(public), warm, signatures())
"""


def test_warm_up_compiles_what_the_tasks_run(tmp_path: Path) -> None:
    """The fork server runs `warm_up` so workers inherit compiled kernels: it must compile
    them for the tasks' own argument types, or each worker would compile again."""
    import subprocess
    import sys

    script = tmp_path / "check.py"
    script.write_text(_WARM_UP_THEN_TASKS)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ids.parquet")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True"), done.stdout
