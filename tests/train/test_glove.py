import numpy as np
import torch

from embedpipe.train.glove import GloVe, glove_weights


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
