"""CBOW: the CPU kernel and the tensor step against autograd, and training."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from embedpipe.config import TrainConfig
from embedpipe.train.cbow import CBOW, cbow_step, reference_loss
from embedpipe.train.checkpoint import (
    STATE,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
)
from embedpipe.train.data import rank_chunks, read_chunk
from embedpipe.train.kernels import cbow_window_sgd
from embedpipe.train.loop import train
from embedpipe.train.registry import CBOWConfig
from embedpipe.train.sgns import kernel_step
from embedpipe.train.windows import (
    RowCompactor,
    WindowBatch,
    alias_table,
    chunk_windows,
    compact_rows,
    window_batches,
    window_contexts,
)
from embedpipe.workdir import METRICS


def window_examples(batch: WindowBatch) -> tuple[list[list[int]], torch.Tensor]:
    """(context ids per centre word with contexts, their targets): `reference_loss`'s input."""
    owner, context = window_contexts(batch)
    contexts: list[list[int]] = [[] for _ in range(len(batch.left))]
    for o, c in zip(owner.tolist(), batch.in_rows[context].tolist(), strict=True):
        contexts[o].append(c)
    has = [i for i, c in enumerate(contexts) if c]
    targets = torch.cat([batch.centre_out.unsqueeze(1), batch.neg_out], 1)[has]
    return [contexts[i] for i in has], batch.out_rows[targets]


def test_kernel_gradient_equals_autograd_and_the_tensor_path(kit: SimpleNamespace) -> None:
    batch = kit.window_fixture()
    assert torch.any(batch.left == batch.right)  # some centre words have no context
    model = CBOW(30, 6, seed=0)
    w_in, w_out = (t.float() for t in kit.tables())
    loss, g_in, g_out = kernel_step(cbow_window_sgd, w_in, w_out, batch, lr=0.0)
    a, b = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
    want = reference_loss(a, b, *window_examples(batch))
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(kit.scatter(batch.in_rows, g_in, 30), a.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kit.scatter(batch.out_rows, g_out, 30), b.grad, rtol=1e-4, atol=1e-5)
    for x, y in zip((loss, g_in, g_out), model.tensor_step(w_in, w_out, batch, 0.0), strict=True):
        torch.testing.assert_close(x.double(), y.double(), rtol=1e-4, atol=1e-5)

    # Through the module: sparse, coalesced gradients with the same values.
    with torch.no_grad():
        model.input.weight.copy_(w_in)
        model.output.weight.copy_(w_out)
    model(batch).backward()
    assert model.input.weight.grad.is_sparse
    torch.testing.assert_close(model.input.weight.grad.to_dense(), a.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.output.weight.grad.to_dense(), b.grad, rtol=1e-4, atol=1e-5)


def test_kernel_sgd_is_gensims_loop(kit: SimpleNamespace) -> None:
    """With lr > 0: centre word by centre word, the full error to every context row."""
    batch = kit.window_fixture(seed=5)
    w_in, w_out = (t.float() for t in kit.tables())
    lr = 0.1
    _, g_in, g_out = kernel_step(cbow_window_sgd, w_in, w_out, batch, lr=lr)
    a, b = w_in.double().clone(), w_out.double().clone()
    for ctx, targets in zip(*window_examples(batch), strict=True):
        h = a[ctx].mean(0)
        err = torch.zeros_like(h)
        target = int(targets[0])
        for q, o in enumerate(targets.tolist()):
            if q > 0 and o == target:
                continue
            g = lr * (float(q == 0) - torch.sigmoid(h @ b[o]))
            err += g * b[o]
            b[o] += g * h
        for c in ctx:
            a[c] += err
    got_in = w_in.double() - lr * kit.scatter(batch.in_rows, g_in.double(), 30)
    got_out = w_out.double() - lr * kit.scatter(batch.out_rows, g_out.double(), 30)
    torch.testing.assert_close(got_in, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_out, b, rtol=1e-4, atol=1e-5)


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
    model="cbow", epochs=2, checkpoint_every=4, keep_checkpoints=100, log_every=3, threads=1,
    options=CBOWConfig(dim=8, window=3, negatives=3, batch_size=24, lr=0.05),
)  # fmt: skip


def test_training_lowers_the_loss(workdir: Path, tmp_path: Path) -> None:
    options = dataclasses.replace(CONFIG.options, lr=0.2)
    config = dataclasses.replace(CONFIG, epochs=10, checkpoint_every=0, options=options)
    train(config, str(workdir), tmp_path / "full")
    records = [json.loads(line) for line in (tmp_path / "full" / METRICS).open()]
    assert records and {"step", "loss", "lr", "words_per_sec", "eta_sec"} <= set(records[0])
    assert (tmp_path / "full" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    expected = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))[0]
    assert torch.isfinite(expected["input"]).all()
    # The loss of a fixed set of the corpus's examples went down.
    flat, offsets = read_chunk(rank_chunks(str(workdir / "sequences"), 0, 1, 10**6)[0])
    vocab = len(expected["input"])
    keep = np.ones(vocab)
    noise = alias_table(np.ones(vocab))
    windows = chunk_windows(flat, offsets, keep, 3, 3, noise, np.random.default_rng(0))
    batch, _ = next(window_batches(windows, len(flat), 0, RowCompactor(vocab)))
    initial = CBOW(vocab, options.dim, config.seed)
    before = initial.step(initial.input.weight.detach(), initial.output.weight.detach(), batch, 0.0)
    after = initial.step(expected["input"], expected["output"], batch, 0.0)
    before, after = before[0], after[0]
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
