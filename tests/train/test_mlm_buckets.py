"""The bucket batch sampler: one bucket per batch, the token budget, seeded order, rank shares."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from embedpipe.train.buckets import (
    BucketBatch,
    cut_long,
    heldout_mask,
    iter_bucket_batches,
    iter_heldout_batches,
    pair_examples,
    rank_bucket_chunks,
    token_budget_batches,
    visit_order,
)
from embedpipe.train.mlm import CLS_ID, IGNORE, SEP_ID
from embedpipe.train.registry import MLMConfig

HERE = Path(__file__).resolve().parent
PORT = 29613  # this area's ports: 29610-29629


def load_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mlm_corpus", HERE / "mlm_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlm_corpus"] = module
    spec.loader.exec_module(module)
    return module


corpus = load_helper()
CONFIG = MLMConfig(max_len=40, max_tokens=120, heldout=0.1, chunk_rows=50, pair_prob=0.5)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.write_mlm_workdir(tmp_path_factory.mktemp("mlm") / "work", n_sequences=600)


def originals(batch: BucketBatch) -> list[tuple[int, ...]]:
    """The sequences of a batch as stored: the labels undo the masking; split at [SEP]s."""
    inputs, segments, mask, labels = (t.numpy() for t in batch.data)
    ids = np.where(labels != IGNORE, labels, inputs)
    out = []
    for row, real, seg in zip(ids, mask, segments, strict=True):
        for s in (0, 1):
            part = row[real & (seg == s)]
            part = part[(part != CLS_ID) & (part != SEP_ID)]
            if len(part):
                out.append(tuple(part.tolist()))
    return out


def all_sequences(workdir: Path) -> list[tuple[int, ...]]:
    import pyarrow.parquet as pq

    table = pq.read_table(workdir / "buckets")
    return [tuple(s) for s in table.column("ids").to_pylist()]


def epoch(
    workdir: Path, config: MLMConfig, seed: int = 1, ep: int = 0, rank: int = 0, world: int = 1
):
    chunks = rank_bucket_chunks(str(workdir / "buckets"), rank, world, config.chunk_rows)
    return [b for chunk in iter_bucket_batches(config, chunks, 35, seed, ep, rank) for b in chunk]


def test_each_batch_is_one_bucket_under_the_budget(workdir: Path) -> None:
    batches = epoch(workdir, CONFIG)
    assert len(batches) > 20
    for batch in batches:
        ids = batch.data[0]
        assert batch.slots == ids.numel() <= CONFIG.max_tokens
        assert batch.tokens == int(batch.data[2].sum())
        buckets = {corpus.bucket_of(len(s)) for s in originals(batch)}
        assert buckets == {batch.bucket}
    # Several buckets are visited, interleaved rather than one after the other.
    order = [b.bucket for b in batches]
    assert len(set(order)) == 4
    switches = sum(a != b for a, b in zip(order, order[1:], strict=False))
    assert switches > len(set(order))
    # Bucketed batches waste little: under a fifth of the slots are padding here.
    assert sum(b.slots - b.tokens for b in batches) / sum(b.slots for b in batches) < 0.2


def test_an_epoch_covers_the_training_split_once(workdir: Path) -> None:
    seen = Counter(s for b in epoch(workdir, CONFIG) for s in originals(b))
    stored = all_sequences(workdir)
    offsets = np.cumsum([0] + [len(s) for s in stored])
    held = heldout_mask(np.concatenate(stored).astype(np.int32), offsets, CONFIG.heldout)
    train = Counter(s for s, h in zip(stored, held, strict=True) if not h)
    assert seen == train
    assert 0.03 < held.mean() < 0.2
    heldout = Counter(
        s
        for b in iter_heldout_batches(
            CONFIG, rank_bucket_chunks(str(workdir / "buckets"), 0, 1, 50), 35, 1
        )
        for s in originals(b)
    )
    assert heldout == Counter(s for s, h in zip(stored, held, strict=True) if h)


def test_order_is_seeded(workdir: Path) -> None:
    def fingerprint(batches: list[BucketBatch]) -> list[tuple]:
        return [(b.bucket, tuple(b.data[0].flatten().tolist())) for b in batches]

    a = fingerprint(epoch(workdir, CONFIG, seed=1))
    assert a == fingerprint(epoch(workdir, CONFIG, seed=1))
    assert a != fingerprint(epoch(workdir, CONFIG, seed=2))
    assert a != fingerprint(epoch(workdir, CONFIG, seed=1, ep=1))
    # Held-out batches are the same every time (fixed masks), whatever the epoch.
    chunks = rank_bucket_chunks(str(workdir / "buckets"), 0, 1, 50)
    first = [b.data[0] for b in iter_heldout_batches(CONFIG, chunks, 35, 1)]
    again = [b.data[0] for b in iter_heldout_batches(CONFIG, chunks, 35, 1)]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))


def test_resuming_from_a_cursor_gives_the_rest_of_the_epoch(workdir: Path) -> None:
    batches = epoch(workdir, CONFIG)
    chunks = rank_bucket_chunks(str(workdir / "buckets"), 0, 1, CONFIG.chunk_rows)
    for k in (3, 17, len(batches) - 1):
        rest = [
            b
            for c in iter_bucket_batches(CONFIG, chunks, 35, 1, 0, 0, batches[k - 1].cursor)
            for b in c
        ]
        assert len(rest) == len(batches) - k
        for x, y in zip(rest, batches[k:], strict=True):
            assert all(torch.equal(s, t) for s, t in zip(x.data, y.data, strict=True))


def test_ranks_share_every_bucket(workdir: Path) -> None:
    shares = [
        Counter(s for b in epoch(workdir, CONFIG, rank=r, world=2) for s in originals(b))
        for r in (0, 1)
    ]
    assert sum(shares[0].values()) > 100 and sum(shares[1].values()) > 100
    assert shares[0] + shares[1] == Counter(s for b in epoch(workdir, CONFIG) for s in originals(b))
    for r in (0, 1):
        chunks = rank_bucket_chunks(str(workdir / "buckets"), r, 2, 50)
        assert set(chunks) == {0, 1, 2, 3}


def test_token_budget_batches() -> None:
    lengths = np.random.default_rng(0).integers(3, 30, 500)
    for sort in (True, False):
        batches = token_budget_batches(lengths, 100, sort=sort)
        assert sorted(np.concatenate(batches).tolist()) == list(range(500))
        for b in batches:
            assert len(b) * lengths[b].max() <= 100
        # Greedy: adding the next example would have broken the budget.
        for b, nxt in zip(batches, batches[1:], strict=False):
            assert (len(b) + 1) * max(lengths[b].max(), lengths[nxt[0]]) > 100
    sorted_waste = sum(len(b) * lengths[b].max() for b in token_budget_batches(lengths, 100))
    plain_waste = sum(len(b) * lengths[b].max() for b in token_budget_batches(lengths, 100, False))
    assert sorted_waste < plain_waste
    # One example over the budget still forms a batch of its own.
    assert [b.tolist() for b in token_budget_batches(np.array([5, 50, 5]), 20, sort=False)] == [
        [0],
        [1],
        [2],
    ]


def test_visit_order_interleaves_buckets_keeping_chunk_order() -> None:
    counts = {0: 3, 1: 5, 4: 2}
    order = visit_order(counts, seed=1, epoch=0)
    assert Counter(b for b, _ in order) == Counter(counts)
    for bucket, n in counts.items():
        assert [c for b, c in order if b == bucket] == list(range(n))
    assert order == visit_order(counts, 1, 0)
    assert order != visit_order(counts, 1, 1)


def test_pairing_and_cutting() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 10, 400)
    examples = pair_examples(lengths, 0.5, 16, rng)
    used = np.concatenate([examples.first, examples.second[examples.second >= 0]])
    assert sorted(used.tolist()) == list(range(400))
    assert examples.lengths.max() <= 16
    pairs = (examples.second >= 0).mean()
    assert 0.2 < pairs < 0.5  # about half the walk's steps join two pieces that fit
    none = pair_examples(lengths, 0.0, 16, rng)
    assert (none.second < 0).all() and (none.lengths == lengths[none.first] + 2).all()

    offsets = np.array([0, 5, 25, 27])
    rows = cut_long(offsets, np.array([True, True, False]), 8)
    assert rows.tolist() == [[0, 5], [5, 13], [13, 21], [21, 25]]


def test_heldout_split_depends_on_content_only() -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(5, 1000, int(rng.integers(1, 20))).astype(np.int32) for _ in range(20000)]
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    held = heldout_mask(np.concatenate(seqs), offsets, 0.05)
    assert held.mean() == pytest.approx(0.05, abs=0.005)
    # The same sequences in another order and grouping: the same decisions.
    order = rng.permutation(len(seqs))[:500]
    sub = [seqs[i] for i in order]
    sub_held = heldout_mask(np.concatenate(sub), np.cumsum([0] + [len(s) for s in sub]), 0.05)
    np.testing.assert_array_equal(sub_held, held[order])
    assert not heldout_mask(np.concatenate(seqs), offsets, 0.0).any()


@pytest.mark.slow
def test_two_ranks_take_the_same_number_of_steps(workdir: Path) -> None:
    """Two gloo processes run the trainer's agreement loop (`trainer.agree`) over their
    shares: they take the same number of steps, though their shares differ in batches."""
    command = [sys.executable, str(HERE / "mlm_lockstep.py")]
    args = ["2", str(PORT), str(workdir / "buckets"), "30"]
    procs = [
        subprocess.Popen([*command, str(r), *args], stdout=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    rank0, rank1 = (json.loads(o.strip().splitlines()[-1]) for o in outs)
    assert rank0["steps"] == rank1["steps"] > 10
    # The epoch ends for both when one share is done; the other leaves little unseen.
    assert min(rank0["left"], rank1["left"]) == 0
    assert max(rank0["left"], rank1["left"]) <= 0.2 * rank0["steps"]
    assert rank0["tokens"] > 0 and rank1["tokens"] > 0
