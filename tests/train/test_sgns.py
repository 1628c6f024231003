"""The word2vec formulas, the pair generator, the negative sampler and the hand-written step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedpipe import schemas as S
from embedpipe.train.sgns import (
    RowCompactor,
    SkipGram,
    alias_probabilities,
    alias_table,
    compact_rows,
    keep_probabilities,
    noise_distribution,
    reference_loss,
    sample_alias,
    sgns_step,
    skipgram_pairs,
)

SPECIALS = len(S.SPECIAL_TOKENS)


def counts_fixture() -> np.ndarray:
    rng = np.random.default_rng(7)
    counts = rng.integers(1, 5000, size=60).astype(np.int64)
    counts[:SPECIALS] = 0
    counts[SPECIALS] = 200_000  # one very frequent word
    return counts


@pytest.mark.parametrize("sample", [1e-3, 1e-2])
def test_keep_probabilities_formula(sample: float) -> None:
    counts = counts_fixture()
    keep = keep_probabilities(counts, sample)
    total = counts.sum()
    for i, f in enumerate(counts):
        if i < SPECIALS:
            assert keep[i] == 0.0
            continue
        t = sample * total
        assert keep[i] == pytest.approx(min(1.0, (np.sqrt(f / t) + 1) * t / f), rel=1e-12)
    assert keep[SPECIALS] < 1.0  # the frequent word is subsampled


def test_keep_probabilities_without_subsampling_keeps_words_only() -> None:
    counts = counts_fixture()
    counts[1] = 10  # even a special with a count is never trained
    keep = keep_probabilities(counts, 0.0)
    assert np.all(keep[:SPECIALS] == 0.0)
    assert np.all(keep[SPECIALS:] == 1.0)


def test_noise_distribution_formula() -> None:
    counts = counts_fixture()
    counts[2] = 99  # specials get 0 whatever their count
    noise = noise_distribution(counts)
    expected = counts.astype(np.float64) ** 0.75
    expected[:SPECIALS] = 0
    np.testing.assert_allclose(noise, expected / expected.sum(), rtol=1e-12)
    assert noise.sum() == pytest.approx(1.0)


def test_alias_table_is_exact_and_samples_the_noise() -> None:
    noise = noise_distribution(counts_fixture())
    threshold, alias = alias_table(noise)
    np.testing.assert_allclose(alias_probabilities(threshold, alias), noise, atol=1e-12)
    draws = sample_alias(threshold, alias, 400_000, np.random.default_rng(0))
    assert draws.min() >= SPECIALS  # specials are never drawn
    freq = np.bincount(draws, minlength=len(noise)) / len(draws)
    np.testing.assert_allclose(freq, noise, atol=4e-3)


def reference_pairs(
    flat: np.ndarray, offsets: np.ndarray, keep: np.ndarray, window: int, seed: int
) -> list[tuple[int, int]]:
    """word2vec's loops, with the same random draws as `skipgram_pairs`."""
    rng = np.random.default_rng(seed)
    kept = rng.random(len(flat)) < keep[flat]
    sequences = [
        [int(flat[j]) for j in range(offsets[i], offsets[i + 1]) if kept[j]]
        for i in range(len(offsets) - 1)
    ]
    reach = rng.integers(1, window + 1, size=sum(len(s) for s in sequences))
    pairs, k = [], 0
    for seq in sequences:
        for i, word in enumerate(seq):
            b = reach[k]
            k += 1
            for j in range(max(0, i - b), min(len(seq), i + b + 1)):
                if j != i:
                    pairs.append((word, seq[j]))
    return sorted(pairs)


@pytest.mark.parametrize("window", [1, 3, 5])
def test_skipgram_pairs_match_a_plain_loop(window: int) -> None:
    rng = np.random.default_rng(window)
    lengths = rng.integers(1, 12, size=40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = rng.integers(0, 30, size=offsets[-1]).astype(np.int32)
    keep = np.where(np.arange(30) < SPECIALS, 0.0, rng.uniform(0.3, 1.0, 30))
    centre, context = skipgram_pairs(flat, offsets, keep, window, np.random.default_rng(11))
    got = sorted(zip(centre.tolist(), context.tolist(), strict=True))
    assert got == reference_pairs(flat, offsets, keep, window, 11)
    assert len(got) > 0


def test_skipgram_pairs_of_nothing() -> None:
    keep = np.ones(10)
    centre, context = skipgram_pairs(
        np.array([7], np.int32), np.array([0, 1]), keep, 5, np.random.default_rng(0)
    )
    assert len(centre) == len(context) == 0


def test_compact_rows_is_unique_with_inverse() -> None:
    rng = np.random.default_rng(3)
    compact = RowCompactor(100)
    for _ in range(3):  # the buffers are reused between calls
        ids = rng.integers(0, 100, size=(50, 4))
        rows, inverse = compact(ids.reshape(-1))
        expected_rows, expected_inverse = np.unique(ids, return_inverse=True)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(inverse, expected_inverse.reshape(-1))
        np.testing.assert_array_equal(rows[inverse], ids.reshape(-1))
    rows, inverse = compact_rows(np.array([5, 5, 2]), 10)
    assert rows.tolist() == [2, 5] and inverse.tolist() == [1, 1, 0]


def batch_fixture(vocab: int = 30, batch: int = 50, negatives: int = 4, seed: int = 0):  # noqa: ANN201
    """(centre, targets) ids and the compact form `sgns_step` takes."""
    rng = np.random.default_rng(seed)
    centre = rng.integers(0, vocab, size=batch)
    targets = rng.integers(0, vocab, size=(batch, 1 + negatives))
    targets[::5, 2] = targets[::5, 0]  # negatives equal to the context are skipped
    in_rows, in_pos = compact_rows(centre, vocab)
    out_rows, out_pos = compact_rows(targets, vocab)
    ids = [torch.from_numpy(centre), torch.from_numpy(targets)]
    compact = [
        torch.from_numpy(x) for x in (in_rows, in_pos, out_rows, out_pos.reshape(targets.shape))
    ]
    return ids, compact


def tables(vocab: int = 30, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(vocab, dim, generator=g, dtype=torch.float64) * 0.5,
        torch.randn(vocab, dim, generator=g, dtype=torch.float64) * 0.5,
    )


def scatter(rows: torch.Tensor, values: torch.Tensor, vocab: int) -> torch.Tensor:
    dense = torch.zeros(vocab, values.shape[1], dtype=values.dtype)
    dense[rows] = values
    return dense


@pytest.mark.parametrize(("block", "lr"), [(1024, 0.0), (7, 0.0), (1024, 0.5)])
def test_sgns_step_gradient_equals_autograd(block: int, lr: float) -> None:
    """Without sequential blocks (lr = 0, or one block) the step is the loss's gradient."""
    (centre, targets), compact = batch_fixture()
    in_rows, _, out_rows, _ = compact
    w_in, w_out = tables()
    loss, grad_in, grad_out = sgns_step(w_in, w_out, *compact, lr=lr, block=block)

    a, b = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
    expected = reference_loss(a, b, centre, targets)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(scatter(in_rows, grad_in, 30), a.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(scatter(out_rows, grad_out, 30), b.grad, rtol=1e-10, atol=1e-12)


def test_sgns_step_blocks_see_earlier_updates() -> None:
    """With lr > 0, -lr * gradient is where block-by-block SGD lands (a word2vec thread)."""
    (centre, targets), compact = batch_fixture(batch=40)
    in_rows, _, out_rows, _ = compact
    w_in, w_out = tables()
    lr, block = 0.3, 8
    loss, grad_in, grad_out = sgns_step(w_in, w_out, *compact, lr=lr, block=block)

    a, b, total = w_in.clone(), w_out.clone(), 0.0
    for start in range(0, len(centre), block):
        a.requires_grad_(), b.requires_grad_()
        sl = slice(start, start + block)
        block_loss = reference_loss(a, b, centre[sl], targets[sl])
        block_loss.backward()
        total += block_loss.item()
        with torch.no_grad():
            a, b = a - lr * a.grad, b - lr * b.grad
    assert loss.item() == pytest.approx(total, rel=1e-10)
    torch.testing.assert_close(w_in - lr * scatter(in_rows, grad_in, 30), a, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        w_out - lr * scatter(out_rows, grad_out, 30), b, rtol=1e-9, atol=1e-12
    )


def test_skipgram_module_returns_coalesced_sparse_gradients() -> None:
    (centre, targets), compact = batch_fixture()
    model = SkipGram(30, 6, seed=1)
    with torch.no_grad():
        model.output.weight.normal_(generator=torch.Generator().manual_seed(2))
    loss = model(*compact)
    (loss * 2).backward()  # the world-size multiplier reaches the gradients
    a = model.input.weight.detach().clone().requires_grad_()
    b = model.output.weight.detach().clone().requires_grad_()
    expected = reference_loss(a, b, centre, targets)
    (expected * 2).backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for param, ref in ((model.input.weight, a), (model.output.weight, b)):
        assert param.grad.is_sparse
        rows = param.grad._indices()[0]
        assert torch.all(rows[1:] > rows[:-1])  # coalesced: one entry per row, sorted
        torch.testing.assert_close(param.grad.to_dense(), ref.grad, rtol=1e-4, atol=1e-6)


def test_skipgram_initialisation_is_word2vecs() -> None:
    model = SkipGram(50, 10, seed=3)
    assert model.input.weight.abs().max() <= 0.5 / 10
    assert torch.count_nonzero(model.output.weight) == 0
    assert torch.equal(model.input.weight, SkipGram(50, 10, seed=3).input.weight)
