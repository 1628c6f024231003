import numpy as np
import pytest
import torch

from embedpipe.train.glove import GloVe, batch_adagrad_, glove_step, glove_weights


def test_weighting_function() -> None:
    x = torch.tensor([1.0, 50.0, 100.0, 400.0], dtype=torch.float64)
    want = np.minimum(1.0, (x.numpy() / 100.0) ** 0.75)
    np.testing.assert_allclose(glove_weights(x, 100.0, 0.75).numpy(), want)


def test_loss_and_gradient_against_a_plain_reference() -> None:
    torch.manual_seed(0)
    model = GloVe(7, 3, seed=1).double()
    rows = torch.tensor([0, 2, 2, 5])
    cols = torch.tensor([1, 3, 3, 0])
    x = torch.tensor([2.0, 0.5, 120.0, 7.0], dtype=torch.float64)
    loss = model(rows, cols, x, 100.0, 0.75)
    loss.backward()

    w = model.word.weight.detach().numpy()
    c = model.context.weight.detach().numpy()
    bw = model.word_bias.weight.detach().numpy()[:, 0]
    bc = model.context_bias.weight.detach().numpy()[:, 0]
    want_loss, grad_w = 0.0, np.zeros_like(w)
    for i, j, xij in zip(rows.tolist(), cols.tolist(), x.tolist(), strict=True):
        f = min(1.0, (xij / 100.0) ** 0.75)
        diff = w[i] @ c[j] + bw[i] + bc[j] - np.log(xij)
        want_loss += 0.5 * f * diff**2
        grad_w[i] += f * diff * c[j]
    assert np.isclose(loss.item(), want_loss)
    np.testing.assert_allclose(model.word.weight.grad.to_dense().numpy(), grad_w, atol=1e-12)
    assert model.word.weight.grad.is_sparse


def test_adagrad_fits_a_small_matrix() -> None:
    rng = np.random.default_rng(0)
    true = rng.normal(size=(20, 4))
    logx = true @ true.T / 4 + 2.0
    rows, cols = np.nonzero(np.ones((20, 20)))
    x = torch.tensor(np.exp(logx[rows, cols]))
    model = GloVe(20, 8, seed=0).double()
    optimizer = torch.optim.Adagrad(model.parameters(), lr=0.1, initial_accumulator_value=1.0)
    r, c = torch.from_numpy(rows), torch.from_numpy(cols)
    first = None
    for _ in range(300):
        optimizer.zero_grad()
        loss = model(r, c, x, 100.0, 0.75)
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.05 * first


def stanford_loop(tables: list[np.ndarray], sums: list[np.ndarray], entries, lr: float) -> float:
    """The Stanford tool's AdaGrad loop in plain Python (float64), in place."""
    w, c, bw, bc = tables
    sw, sc, sbw, sbc = sums
    loss = 0.0
    for i, j, x in entries:
        diff = w[i] @ c[j] + bw[i, 0] + bc[j, 0] - np.log(x)
        fdiff = (1.0 if x > 10.0 else (x / 10.0) ** 0.75) * diff
        loss += 0.5 * fdiff * diff
        g = lr * fdiff
        gw, gc = g * c[j], g * w[i]
        w[i] -= gw / np.sqrt(sw[i])
        c[j] -= gc / np.sqrt(sc[j])
        sw[i] += gw**2
        sc[j] += gc**2
        bw[i, 0] -= g / np.sqrt(sbw[i, 0])
        bc[j, 0] -= g / np.sqrt(sbc[j, 0])
        sbw[i, 0] += g * g
        sbc[j, 0] += g * g
    return loss


def random_state(vocab: int, dim: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    tables = [torch.rand(vocab, width, generator=g) - 0.5 for width in (dim, dim, 1, 1)]
    sums = [1.0 + torch.rand(vocab, width, generator=g) for width in (dim, dim, 1, 1)]
    return tables, sums


def entries_of(n: int, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, vocab, n), rng.integers(0, vocab, n)
    return rows, cols, rng.uniform(0.2, 30.0, n).astype(np.float32)


def applied(tables, sums, result) -> list[torch.Tensor]:
    out = [t.clone() for t in [*tables, *sums]]
    for t, r, c in zip(out, result.rows, result.changes, strict=True):
        t.index_add_(0, r, c)
    return out


def test_kernel_step_is_the_stanford_loop_entry_by_entry() -> None:
    """Rows repeat across entries, so each entry must see the updates before it."""
    tables, sums = random_state(9, 6, seed=0)
    rows, cols, x = entries_of(200, 9, seed=1)
    before = [t.clone() for t in [*tables, *sums]]
    result = glove_step(tables, sums, rows, cols, x, 10.0, 0.75, 0.05)
    for t, b in zip([*tables, *sums], before, strict=True):
        assert torch.equal(t, b)  # the step only returns changes
    want = [t.double().numpy().copy() for t in [*tables, *sums]]
    want_loss = stanford_loop(
        want[:4], want[4:], zip(rows, cols, x.astype(np.float64), strict=True), 0.05
    )
    assert result.loss == pytest.approx(want_loss, rel=1e-4)
    for got, ref in zip(applied(tables, sums, result), want, strict=True):
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-5)
    assert [r.tolist() for r in result.rows[:2]] == [sorted(set(rows)), sorted(set(cols))]


def test_batch_step_equals_the_kernel_when_no_row_repeats() -> None:
    """The GPU path (one AdaGrad step on summed gradients) against the kernel."""
    tables, sums = random_state(40, 5, seed=2)
    rng = np.random.default_rng(3)
    rows, cols = rng.permutation(40)[:15], rng.permutation(40)[:15]
    x = rng.uniform(0.5, 20.0, 15).astype(np.float32)
    result = glove_step(tables, sums, rows, cols, x, 10.0, 0.75, 0.1)
    work = [t.index_select(0, torch.from_numpy(np.sort(r))) for t, r in
            zip([*tables, *sums], [rows, cols] * 4, strict=True)]  # fmt: skip
    before = [w.clone() for w in work]
    rank = [np.searchsorted(np.sort(a), a) for a in (rows, cols)]
    loss = batch_adagrad_(work, rank[0], rank[1], x, 10.0, 0.75, 0.1)
    assert loss == pytest.approx(result.loss, rel=1e-5)
    for w, b, change in zip(work, before, result.changes, strict=True):
        torch.testing.assert_close(w - b, change, rtol=1e-4, atol=1e-6)


def test_hogwild_threads_fit_a_small_matrix_too() -> None:
    rng = np.random.default_rng(0)
    true = rng.normal(size=(30, 4))
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(30), np.arange(30)))
    x = np.exp(true @ true.T / 4 + 1)[rows, cols].astype(np.float32)
    for threads in (1, 2):
        model = GloVe(30, 8, seed=0)
        tables, sums = model.tables(), [torch.ones_like(t) for t in model.tables()]
        losses = []
        for epoch in range(60):
            order = np.random.default_rng(epoch).permutation(len(rows))
            result = glove_step(
                tables, sums, rows[order], cols[order], x[order], 10.0, 0.75, 0.05, threads
            )
            for t, r, c in zip([*tables, *sums], result.rows, result.changes, strict=True):
                t.detach().index_add_(0, r, c)
            losses.append(result.loss)
        assert losses[-1] < 0.05 * losses[0], threads
