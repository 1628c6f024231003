"""CBOW: example generation, the hand-written step against autograd, and training."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from embedpipe.config import TrainConfig
from embedpipe.train.cbow import (
    CBOW,
    cbow_examples,
    cbow_step,
    permute_examples,
    reference_loss,
)
from embedpipe.train.checkpoint import (
    STATE,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
)
from embedpipe.train.data import rank_chunks, read_chunk
from embedpipe.train.sgns import compact_rows, skipgram_pairs
from embedpipe.train.trainer import METRICS, train


def test_examples_group_the_skipgram_pairs() -> None:
    rng = np.random.default_rng(0)
    flat = rng.integers(5, 30, 200).astype(np.int32)
    offsets = np.array([0, 3, 50, 51, 120, 200])
    keep = np.full(30, 0.8)
    centre, contexts, ctx_offsets = cbow_examples(flat, offsets, keep, 4, np.random.default_rng(3))
    pc, po = skipgram_pairs(flat, offsets, keep, 4, np.random.default_rng(3))
    assert len(contexts) == len(pc) and np.all(np.diff(ctx_offsets) >= 1)
    # Same multiset of (centre, context) as the skip-gram pairs of the same draws.
    mine = sorted(
        zip(np.repeat(centre, np.diff(ctx_offsets)).tolist(), contexts.tolist(), strict=True)
    )
    assert mine == sorted(zip(pc.tolist(), po.tolist(), strict=True))

    order = np.random.default_rng(1).permutation(len(centre))
    permuted, new_offsets = permute_examples(order, contexts, ctx_offsets)
    for new, old in enumerate(order[:20]):
        np.testing.assert_array_equal(
            permuted[new_offsets[new] : new_offsets[new + 1]],
            contexts[ctx_offsets[old] : ctx_offsets[old + 1]],
        )


def random_batch(vocab: int, batch: int, k: int, seed: int):  # noqa: ANN201
    rng = np.random.default_rng(seed)
    contexts = [rng.integers(0, vocab, int(rng.integers(1, 6))).tolist() for _ in range(batch)]
    targets = rng.integers(0, vocab, (batch, 1 + k))
    targets[0, 2] = targets[0, 0]  # a negative equal to the centre is skipped
    flat = np.concatenate([np.array(c) for c in contexts])
    ctx_offsets = np.concatenate([[0], np.cumsum([len(c) for c in contexts])])
    in_rows, ctx_pos = compact_rows(flat, vocab)
    out_rows, out_pos = compact_rows(targets.reshape(-1), vocab)
    compact = tuple(
        torch.from_numpy(t)
        for t in (in_rows, ctx_pos, ctx_offsets, out_rows, out_pos.reshape(batch, 1 + k))
    )
    return contexts, torch.from_numpy(targets), compact


def test_step_matches_the_autograd_reference() -> None:
    vocab, dim = 12, 5
    gen = torch.Generator().manual_seed(0)
    w_in = torch.randn(vocab, dim, generator=gen, dtype=torch.float64)
    w_out = torch.randn(vocab, dim, generator=gen, dtype=torch.float64)
    contexts, targets, compact = random_batch(vocab, 9, 3, seed=1)

    ref_in, ref_out = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
    want = reference_loss(ref_in, ref_out, contexts, targets)
    want.backward()
    for block in (4, 1024):  # several blocks (lr = 0: exact gradient) and one
        loss, g_in, g_out = cbow_step(w_in, w_out, *compact, lr=0.0, block=block)
        torch.testing.assert_close(loss, want.detach())
        in_rows, out_rows = compact[0], compact[3]
        dense_in = torch.zeros_like(w_in).index_add_(0, in_rows, g_in)
        dense_out = torch.zeros_like(w_out).index_add_(0, out_rows, g_out)
        torch.testing.assert_close(dense_in, ref_in.grad)
        torch.testing.assert_close(dense_out, ref_out.grad)

    # Through the module: sparse, coalesced gradients with the same values.
    model = CBOW(vocab, dim, seed=0).double()
    with torch.no_grad():
        model.input.weight.copy_(w_in)
        model.output.weight.copy_(w_out)
    model(*compact).backward()
    assert model.input.weight.grad.is_sparse
    torch.testing.assert_close(model.input.weight.grad.to_dense(), ref_in.grad)
    torch.testing.assert_close(model.output.weight.grad.to_dense(), ref_out.grad)


def test_blocked_step_applies_sequential_updates() -> None:
    """With lr > 0 the blocks see earlier updates: -lr x gradient equals block-wise SGD."""
    vocab, dim, lr = 12, 5, 0.1
    gen = torch.Generator().manual_seed(2)
    w_in = torch.randn(vocab, dim, generator=gen, dtype=torch.float64)
    w_out = torch.randn(vocab, dim, generator=gen, dtype=torch.float64)
    contexts, targets, compact = random_batch(vocab, 8, 2, seed=4)
    _, g_in, g_out = cbow_step(w_in, w_out, *compact, lr=lr, block=4)
    got_in = w_in.index_add(0, compact[0], g_in, alpha=-lr)
    got_out = w_out.index_add(0, compact[3], g_out, alpha=-lr)

    a, b = w_in.clone(), w_out.clone()
    for lo in (0, 4):
        ra, rb = a.clone().requires_grad_(), b.clone().requires_grad_()
        reference_loss(ra, rb, contexts[lo : lo + 4], targets[lo : lo + 4]).backward()
        a, b = a - lr * ra.grad, b - lr * rb.grad
    torch.testing.assert_close(got_in, a)
    torch.testing.assert_close(got_out, b)


CONFIG = TrainConfig(
    model="cbow", dim=8, window=3, negatives=3, epochs=2, batch_size=24, checkpoint_every=4,
    keep_checkpoints=100, log_every=3, lr=0.05,
)  # fmt: skip


def test_training_lowers_the_loss(workdir: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(CONFIG, epochs=10, lr=0.2, checkpoint_every=0)
    train(config, str(workdir), tmp_path / "full")
    assert (tmp_path / "full" / METRICS).is_file()
    expected = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))[0]
    assert torch.isfinite(expected["input"]).all()
    # The loss of a fixed set of the corpus's examples went down.
    flat, offsets = read_chunk(rank_chunks(str(workdir / "sequences"), 0, 1, 10**6)[0])
    keep = np.ones(int(flat.max()) + 1)
    centre, contexts, ctx_offsets = cbow_examples(flat, offsets, keep, 3, np.random.default_rng(0))
    noise = np.random.default_rng(1).integers(5, len(keep), (len(centre), 3))
    targets = np.concatenate([centre[:, None], noise], axis=1)
    in_rows, ctx_pos = compact_rows(contexts, len(keep))
    out_rows, out_pos = compact_rows(targets.reshape(-1), len(keep))
    batch = [torch.from_numpy(t) for t in (in_rows, ctx_pos, ctx_offsets, out_rows)]
    batch.append(torch.from_numpy(out_pos.reshape(len(centre), 4)))
    initial = CBOW(len(expected["input"]), config.dim, config.seed)
    before = cbow_step(initial.input.weight.detach(), initial.output.weight.detach(), *batch)[0]
    after = cbow_step(expected["input"], expected["output"], *batch)[0]
    assert after < 0.97 * before  # ~0.93: the toy corpus has only unigram structure


def test_resume_after_a_kill_repeats_the_run_exactly(workdir: Path, tmp_path: Path) -> None:
    config = CONFIG
    full = train(config, str(workdir), tmp_path / "full")
    expected = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))[0]

    checkpoints = complete_checkpoints(tmp_path / "full" / "checkpoints")[:-1]
    states = [json.loads((p / STATE).read_text()) for p in checkpoints]
    mid = [p for p, s in zip(checkpoints, states, strict=True) if s["cursors"][0][1] >= 1]
    assert mid
    for killed_at in (mid[0], checkpoints[len(checkpoints) // 2]):
        out = tmp_path / f"resumed-{killed_at.name}"
        shutil.copytree(killed_at, out / "checkpoints" / killed_at.name)
        resumed = train(config, str(workdir), out)
        assert resumed["steps"] == full["steps"]
        got = load_checkpoint(latest_checkpoint(out / "checkpoints"))[0]
        for name in ("input", "output"):
            assert torch.equal(expected[name], got[name]), (killed_at.name, name)
