"""The word2vec formulas, window batches, the negative sampler, the CPU kernel and the tensor step."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from embedpipe import schemas as S
from embedpipe.train.cbow import CBOW
from embedpipe.train.kernels import sgns_window_sgd
from embedpipe.train.sgns import (
    InPlaceTrainer,
    SkipGram,
    kernel_step,
    reference_loss,
    run_sgd,
    sgns_step,
)
from embedpipe.train.windows import (
    RowCompactor,
    SpanBatch,
    WindowBatch,
    alias_probabilities,
    alias_table,
    batch_count,
    chunk_windows,
    compact_batch,
    compact_rows,
    keep_probabilities,
    noise_distribution,
    sample_alias,
    span_batches,
    window_batches,
    window_contexts,
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
    """word2vec's loops, with the same random draws as `chunk_windows`."""
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


def batch_pairs(batch: WindowBatch) -> list[tuple[int, int]]:
    """(centre id, context id) of every pair of a window batch."""
    owner, context = window_contexts(batch)
    centre = batch.out_rows[batch.centre_out[owner]]
    return list(zip(centre.tolist(), batch.in_rows[context].tolist(), strict=True))


@pytest.mark.parametrize(("window", "batch_size"), [(1, 5), (3, 7), (5, 1000)])
def test_window_batches_hold_word2vecs_pairs(
    window: int, batch_size: int, kit: SimpleNamespace
) -> None:
    """However the batches cut the chunk, their windows give exactly word2vec's pairs."""
    flat, offsets, keep = kit.random_chunk(window)
    noise = alias_table(noise_distribution(np.arange(30) + 1.0))
    windows = chunk_windows(flat, offsets, keep, window, 3, noise, np.random.default_rng(11))
    compact = RowCompactor(30)
    got, examples, centres = [], 0, 0
    for batch, count in window_batches(windows, batch_size, 0, compact):
        pairs = batch_pairs(batch)
        assert count == len(pairs)
        got += pairs
        examples += count
        centres += len(batch.left)
        assert batch.neg_out.shape == (len(batch.left), 3)
        negatives = batch.out_rows[batch.neg_out]
        assert torch.all(negatives >= SPECIALS)  # the noise never draws a special token
    assert centres == len(windows.ids)
    assert sorted(got) == reference_pairs(flat, offsets, keep, window, 11)
    assert examples == int(windows.examples.sum()) > 0


def test_window_batches_resume_mid_chunk(kit: SimpleNamespace) -> None:
    flat, offsets, keep = kit.random_chunk(4)
    noise = alias_table(noise_distribution(np.arange(30) + 1.0))
    windows = chunk_windows(flat, offsets, keep, 3, 2, noise, np.random.default_rng(0))
    every = list(window_batches(windows, 9, 0, RowCompactor(30)))
    later = list(window_batches(windows, 9, 2, RowCompactor(30)))
    assert len(later) == len(every) - 2
    for (a, _), (b, _) in zip(every[2:], later, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_span_batches_are_the_window_batches_over_global_ids(kit: SimpleNamespace) -> None:
    """The in-place path's batches hold the same examples as the compact ones."""
    flat, offsets, keep = kit.random_chunk(2)
    noise = alias_table(noise_distribution(np.arange(30) + 1.0))
    windows = chunk_windows(flat, offsets, keep, 3, 2, noise, np.random.default_rng(0))
    spans = list(span_batches(windows, 7, 1))
    compact = list(window_batches(windows, 7, 1, RowCompactor(30)))
    assert len(spans) == len(compact) == batch_count(windows, 7) - 1 > 2
    for (span, examples), (batch, count) in zip(spans, compact, strict=True):
        assert examples == count
        np.testing.assert_array_equal(batch.in_rows[batch.span].numpy(), span.span)
        np.testing.assert_array_equal(batch.out_rows[batch.centre_out].numpy(), span.centres)
        np.testing.assert_array_equal(batch.out_rows[batch.neg_out].numpy(), span.negatives)
        for name in ("left", "right", "centre_span"):
            np.testing.assert_array_equal(getattr(batch, name).numpy(), getattr(span, name))
        assert span.span[span.centre_span].tolist() == span.centres.tolist()


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


@pytest.mark.parametrize(("block", "lr"), [(1024, 0.0), (7, 0.0), (1024, 0.5)])
def test_sgns_step_gradient_equals_autograd(block: int, lr: float, kit: SimpleNamespace) -> None:
    """Without sequential blocks (lr = 0, or one block) the step is the loss's gradient."""
    (centre, targets), compact = batch_fixture()
    in_rows, _, out_rows, _ = compact
    w_in, w_out = kit.tables()
    loss, grad_in, grad_out = sgns_step(w_in, w_out, *compact, lr=lr, block=block)

    a, b = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
    expected = reference_loss(a, b, centre, targets)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(kit.scatter(in_rows, grad_in, 30), a.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kit.scatter(out_rows, grad_out, 30), b.grad, rtol=1e-10, atol=1e-12)


def test_sgns_step_blocks_see_earlier_updates(kit: SimpleNamespace) -> None:
    """With lr > 0, -lr * gradient is where block-by-block SGD lands (a word2vec thread)."""
    (centre, targets), compact = batch_fixture(batch=40)
    in_rows, _, out_rows, _ = compact
    w_in, w_out = kit.tables()
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
    torch.testing.assert_close(
        w_in - lr * kit.scatter(in_rows, grad_in, 30), a, rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(
        w_out - lr * kit.scatter(out_rows, grad_out, 30), b, rtol=1e-9, atol=1e-12
    )


def batch_targets(batch: WindowBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(context ids, targets (centre then negatives)) per pair: `reference_loss`'s input."""
    owner, context = window_contexts(batch)
    targets = torch.cat([batch.centre_out.unsqueeze(1), batch.neg_out], 1)[owner]
    return batch.in_rows[context], batch.out_rows[targets]


def test_kernel_gradient_equals_autograd(kit: SimpleNamespace) -> None:
    batch = kit.window_fixture()
    w_in, w_out = (t.float() for t in kit.tables())
    loss, grad_in, grad_out = kernel_step(sgns_window_sgd, w_in, w_out, batch, lr=0.0)
    a, b = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
    expected = reference_loss(a, b, *batch_targets(batch))
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(
        kit.scatter(batch.in_rows, grad_in, 30), a.grad, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        kit.scatter(batch.out_rows, grad_out, 30), b.grad, rtol=1e-4, atol=1e-5
    )


def test_kernel_sgd_is_word2vecs_loop(kit: SimpleNamespace) -> None:
    """With lr > 0 the kernel is word2vec.c's loop, centre word by centre word."""
    batch = kit.window_fixture(seed=2)
    w_in, w_out = (t.float() for t in kit.tables())
    lr = 0.2
    _, grad_in, grad_out = kernel_step(sgns_window_sgd, w_in, w_out, batch, lr=lr)

    a, b = w_in.double().clone(), w_out.double().clone()
    ids_in, ids_out = batch.in_rows, batch.out_rows
    for c in range(len(batch.left)):
        target = int(ids_out[batch.centre_out[c]])
        outputs = [(target, 1.0)] + [
            (int(ids_out[n]), 0.0) for n in batch.neg_out[c] if int(ids_out[n]) != target
        ]
        for j in range(int(batch.left[c]), int(batch.right[c]) + 1):
            if j == int(batch.centre_span[c]):
                continue
            row = int(ids_in[batch.span[j]])
            err = torch.zeros(a.shape[1], dtype=torch.float64)
            for o, label in outputs:
                g = lr * (label - torch.sigmoid(a[row] @ b[o]))
                err += g * b[o]
                b[o] += g * a[row]
            a[row] += err
    torch.testing.assert_close(
        w_in.double() - lr * kit.scatter(ids_in, grad_in.double(), 30), a, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        w_out.double() - lr * kit.scatter(ids_out, grad_out.double(), 30), b, rtol=1e-4, atol=1e-5
    )


def test_tensor_path_equals_the_kernel(kit: SimpleNamespace) -> None:
    """The GPU path (pairs through `sgns_step`) and the CPU kernel agree (lr = 0)."""
    batch = kit.window_fixture(seed=3)
    model = SkipGram(30, 6, seed=1)
    w_in, w_out = (t.float() for t in kit.tables())
    cpu = model.step(w_in, w_out, batch, 0.0)
    tensor = model.tensor_step(w_in, w_out, batch, 0.0)
    for x, y in zip(cpu, tensor, strict=True):
        torch.testing.assert_close(x.double(), y.double(), rtol=1e-4, atol=1e-5)


def test_skipgram_module_returns_coalesced_sparse_gradients(kit: SimpleNamespace) -> None:
    batch = kit.window_fixture()
    model = SkipGram(30, 6, seed=1)
    with torch.no_grad():
        model.output.weight.normal_(generator=torch.Generator().manual_seed(2))
    loss = model(batch)
    (loss * 2).backward()  # the world-size multiplier reaches the gradients
    a = model.input.weight.detach().clone().requires_grad_()
    b = model.output.weight.detach().clone().requires_grad_()
    expected = reference_loss(a, b, *batch_targets(batch))
    (expected * 2).backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for param, ref in ((model.input.weight, a), (model.output.weight, b)):
        assert param.grad.is_sparse
        rows = param.grad._indices()[0]
        assert torch.all(rows[1:] > rows[:-1])  # coalesced: one entry per row, sorted
        torch.testing.assert_close(param.grad.to_dense(), ref.grad, rtol=1e-4, atol=1e-6)


def test_skipgram_initialisation_is_gensims() -> None:
    model = SkipGram(500, 10, seed=3)
    assert model.input.weight.abs().max() <= 1 / 10
    assert model.input.weight.abs().max() > 0.9 / 10  # the whole range, not word2vec.c's half
    assert torch.count_nonzero(model.output.weight) == 0
    assert torch.equal(model.input.weight, SkipGram(500, 10, seed=3).input.weight)


def test_kernel_threads_split_the_centre_words_between_them(kit: SimpleNamespace) -> None:
    """Every centre word goes to exactly one thread's run, in order, over the same span."""
    batch = kit.window_fixture(seed=4)
    w_in, w_out = (t.float() for t in kit.tables())
    span = batch.span.numpy()
    per_centre = [t.numpy() for t in (batch.left, batch.right, batch.centre_span)]
    per_centre += [batch.centre_out.numpy(), batch.neg_out.numpy()]
    runs: list[tuple[np.ndarray, ...]] = []

    def record(w_i, w_o, spans, *args):  # noqa: ANN001, ANN002, ANN202
        assert spans is span and w_i is w_in_np
        runs.append(args[:5])
        return 1.5, 0

    w_in_np = w_in.numpy()
    loss = run_sgd(record, w_in_np, w_out.numpy(), span, per_centre, 1e-3, threads=2)
    assert loss == 3.0 and len(runs) == 2
    for column, whole in enumerate(per_centre):
        np.testing.assert_array_equal(np.concatenate([run[column] for run in runs]), whole)


def test_kernel_threads_train_the_same_examples(kit: SimpleNamespace) -> None:
    """Hogwild threads: the same updates up to their interleaving, and up to the updates
    the threads' races lose (30 rows, all shared: measured up to 11% of the summed change
    in 300 runs). A thread that trained nothing, or twice, would be off by about half."""
    batch = kit.window_fixture(seed=4)
    w_in, w_out = (t.float() for t in kit.tables())
    one = kernel_step(sgns_window_sgd, w_in, w_out, batch, lr=1e-4, threads=1)
    two = kernel_step(sgns_window_sgd, w_in, w_out, batch, lr=1e-4, threads=2)
    # The loss is a sample (every LOSS_EVERY-th centre word of each thread's run).
    assert two[0].item() == pytest.approx(one[0].item(), rel=0.25)
    for x, y in zip(one[1:], two[1:], strict=True):
        assert x.abs().sum() > 0
        assert ((x - y).abs().sum() / x.abs().sum()).item() < 0.25


@pytest.mark.parametrize("model_class", [SkipGram, CBOW])
def test_in_place_trainer_trains_every_batch_once(
    kit: SimpleNamespace, model_class: type[SkipGram]
) -> None:
    """Two threads taking whole batches: each batch trained once, on a kernel thread, and
    its loss counted once (at a tiny learning rate the losses do not depend on the order)."""
    batches = [kit.span_fixture(seed=s) for s in range(6)]
    where: dict[int, set[str]] = {1: set(), 2: set()}

    def run(threads: int) -> tuple[float, SkipGram]:
        model = model_class(30, 8, seed=0)
        with torch.no_grad():
            model.output.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        train = model.train_in_place

        def recorded(batch: SpanBatch, lr: float) -> float:
            where[threads].add(threading.current_thread().name)
            return train(batch, lr)

        model.train_in_place = recorded  # type: ignore[method-assign]
        runner = InPlaceTrainer(model, threads)
        total = sum(runner.submit(batch, 1e-6) for batch in batches)
        return total + runner.drain(), model

    (one, sequential), (two, threaded) = run(1), run(2)
    assert where[1] == {threading.current_thread().name}
    assert where[2] and all(name.startswith("kernel") for name in where[2])
    assert two == pytest.approx(one, rel=1e-4)
    start = model_class(30, 8, seed=0).input.weight
    moved = (sequential.input.weight - start).abs().sum()
    assert moved > 0
    diff = (threaded.input.weight - sequential.input.weight).abs().sum()
    assert diff / moved < 0.25


@pytest.mark.parametrize("model_class", [SkipGram, CBOW])
def test_training_in_place_equals_the_step_on_copies(
    kit: SimpleNamespace, model_class: type[SkipGram]
) -> None:
    """The single-process path (kernel straight on the tables, global ids) against the
    DDP path (kernel on copies of the touched rows, then the SGD update)."""
    batch = kit.span_fixture(seed=5)
    in_place, on_copies = (model_class(30, 8, seed=0) for _ in range(2))
    with torch.no_grad():
        on_copies.output.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        in_place.output.weight.copy_(on_copies.output.weight)
    loss = in_place.train_in_place(batch, 0.05)
    want = on_copies(compact_batch(batch, RowCompactor(30)), 0.05)
    want.backward()
    with torch.no_grad():
        for p in (on_copies.input.weight, on_copies.output.weight):
            p.index_add_(0, p.grad._indices()[0], p.grad._values() * -0.05)
    assert loss == pytest.approx(want.item(), rel=1e-5)
    for a, b in ((in_place.input, on_copies.input), (in_place.output, on_copies.output)):
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
    assert not torch.equal(in_place.input.weight, model_class(30, 8, seed=0).input.weight)
