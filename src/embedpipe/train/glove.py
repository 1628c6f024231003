"""GloVe: weighted least squares on the co-occurrence matrix, trained with AdaGrad.

J = sum_ij f(X_ij) (w_i . c_j + b_i + b~_j - log X_ij)^2 / 2, with f(x) = min(1, (x / x_max)^alpha)
(Pennington et al. 2014; x_max 100 and alpha 0.75 as in the Stanford tool). The published
vectors are W + C, as the Stanford tool writes with `-model 2`.

AdaGrad as the Stanford tool runs it: entry by entry, each parameter moves by
-lr * g / sqrt(G) and then G grows by (lr * g)^2, with G starting at 1 (so early steps are
close to plain SGD at lr, and the step shrinks only once a parameter has moved a lot).
`glove_step` applies it to a batch of entries on working copies of the rows they touch
and returns the changes, which ranks sum (`specs.glove`): on CPU entry by entry in a
compiled kernel (`kernels.glove_adagrad`, optionally in Hogwild threads as the Stanford
tool's); on GPUs as one AdaGrad step on the batch's summed gradients (tensor operations),
which equals the kernel when no two entries of a batch share a row (tested) and drifts
from it as they do: keep GPU batches small relative to the vocabulary.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from embedpipe.train.kernels import glove_adagrad
from embedpipe.train.sgns import kernel_pool
from embedpipe.train.windows import RowCompactor

TABLES = ("word", "context", "word_bias", "context_bias")


def glove_weights(x: torch.Tensor, x_max: float, alpha: float) -> torch.Tensor:
    """f(x) = min(1, (x / x_max) ** alpha)."""
    return torch.clamp(x / x_max, max=1.0).pow(alpha)


class GloVe(nn.Module):
    """Word and context tables with their biases (sparse embeddings: the reference
    `forward` gives gradients over the rows of its entries only)."""

    def __init__(self, vocab_size: int, dim: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.word = nn.Embedding(vocab_size, dim, sparse=True)
        self.context = nn.Embedding(vocab_size, dim, sparse=True)
        self.word_bias = nn.Embedding(vocab_size, 1, sparse=True)
        self.context_bias = nn.Embedding(vocab_size, 1, sparse=True)
        with torch.no_grad():
            for table in (self.word, self.context, self.word_bias, self.context_bias):
                table.weight.uniform_(-0.5 / dim, 0.5 / dim, generator=generator)

    def forward(
        self, rows: torch.Tensor, cols: torch.Tensor, x: torch.Tensor, x_max: float, alpha: float
    ) -> torch.Tensor:
        """The entries' share of J (summed over them)."""
        dot = (self.word(rows) * self.context(cols)).sum(-1)
        diff = dot + self.word_bias(rows).squeeze(-1) + self.context_bias(cols).squeeze(-1)
        diff = diff - torch.log(x)
        return 0.5 * (glove_weights(x, x_max, alpha) * diff.square()).sum()

    def tables(self) -> list[torch.Tensor]:
        """The four weight tables, in `TABLES` order."""
        return [getattr(self, name).weight for name in TABLES]

    def vectors(self) -> torch.Tensor:
        """W + C: the output vectors."""
        return (self.word.weight + self.context.weight).detach()


class StepChanges(NamedTuple):
    """What one step did: its loss, and per table (the 4 weights, then their 4 AdaGrad
    sums) the sorted rows it touched and their change (after - before)."""

    loss: float
    rows: list[torch.Tensor]
    changes: list[torch.Tensor]


@torch.no_grad()
def glove_step(
    tables: list[torch.Tensor],
    sums: list[torch.Tensor],
    rows: np.ndarray,
    cols: np.ndarray,
    x: np.ndarray,
    x_max: float,
    alpha: float,
    lr: float,
    threads: int = 1,
    compact: RowCompactor | None = None,
) -> StepChanges:
    """AdaGrad on a batch of entries, on copies of the rows it touches; nothing is changed.

    `tables`: word, context, word_bias, context_bias; `sums`: their AdaGrad sums. On CPU,
    `threads` > 1 splits the entries into that many runs trained at once on the shared
    copies, lock-free (Hogwild, as the Stanford tool's threads): faster, but the last bits
    of the result vary from run to run.
    """
    compact = compact or RowCompactor(tables[0].shape[0])
    word_rows, word_at = compact(rows)
    context_rows, context_at = compact(cols)
    device = tables[0].device
    touched = [torch.from_numpy(r).to(device) for r in (word_rows, context_rows)] * 2
    work = [t.index_select(0, r) for t, r in zip([*tables, *sums], touched * 2, strict=True)]
    before = [w.clone() for w in work]
    if device.type == "cpu":
        n = len(rows)
        cuts = np.linspace(0, n, min(threads, max(n, 1)) + 1).astype(int)
        arrays = [w.numpy() for w in work]

        def run(lo: int, hi: int) -> float:
            return glove_adagrad(
                *arrays, word_at[lo:hi], context_at[lo:hi], x[lo:hi], x_max, alpha, lr
            )

        runs = list(itertools.pairwise(cuts))
        if len(runs) == 1:
            loss = run(*runs[0])
        else:
            loss = sum(kernel_pool(threads).map(lambda r: run(*r), runs))
    else:
        loss = batch_adagrad_(work, word_at, context_at, x, x_max, alpha, lr)
    changes = [w.sub_(b) for w, b in zip(work, before, strict=True)]
    return StepChanges(float(loss), touched * 2, changes)


@torch.no_grad()
def batch_adagrad_(
    work: list[torch.Tensor],
    word_at: np.ndarray,
    context_at: np.ndarray,
    x: np.ndarray,
    x_max: float,
    alpha: float,
    lr: float,
) -> float:
    """One AdaGrad step of the batch's summed gradients on the working copies, in place
    (the tensor path of `glove_step`: GPUs)."""
    word, context, word_bias, context_bias, *sums = work
    device = word.device
    i = torch.from_numpy(word_at).to(device)
    j = torch.from_numpy(context_at).to(device)
    xs = torch.from_numpy(x).to(device)
    diff = (word[i] * context[j]).sum(-1) + word_bias[i, 0] + context_bias[j, 0] - torch.log(xs)
    fdiff = glove_weights(xs, x_max, alpha) * diff
    loss = 0.5 * (fdiff * diff).sum()
    g = (lr * fdiff).unsqueeze(1)
    grads = [
        torch.zeros_like(word).index_add_(0, i, g * context[j]),
        torch.zeros_like(context).index_add_(0, j, g * word[i]),
        torch.zeros_like(word_bias).index_add_(0, i, g),
        torch.zeros_like(context_bias).index_add_(0, j, g),
    ]
    for table, total, grad in zip(work[:4], sums, grads, strict=True):
        table.sub_(grad / total.sqrt())
        total.add_(grad.square())
    return loss.item()
