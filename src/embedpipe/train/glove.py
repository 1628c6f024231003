"""GloVe: weighted least squares on the co-occurrence matrix, trained with AdaGrad.

J = sum_ij f(X_ij) (w_i . c_j + b_i + b~_j - log X_ij)^2 / 2, with f(x) = min(1, (x / x_max)^alpha)
(Pennington et al. 2014; x_max 100 and alpha 0.75 as in the Stanford tool). The four tables
are sparse embeddings, so a step's gradients (and what DDP all-reduces) cover only the rows
of its entries. The published vectors are W + C, as the Stanford tool writes with
`-model 2`. AdaGrad starts its squared-gradient sums at 1, as the Stanford tool does.
"""

from __future__ import annotations

import torch
from torch import nn


def glove_weights(x: torch.Tensor, x_max: float, alpha: float) -> torch.Tensor:
    """f(x) = min(1, (x / x_max) ** alpha)."""
    return torch.clamp(x / x_max, max=1.0).pow(alpha)


class GloVe(nn.Module):
    """Word and context tables with their biases, all sparse."""

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
        """The batch's share of J (summed over its entries)."""
        dot = (self.word(rows) * self.context(cols)).sum(-1)
        diff = dot + self.word_bias(rows).squeeze(-1) + self.context_bias(cols).squeeze(-1)
        diff = diff - torch.log(x)
        return 0.5 * (glove_weights(x, x_max, alpha) * diff.square()).sum()

    def vectors(self) -> torch.Tensor:
        """W + C: the output vectors."""
        return (self.word.weight + self.context.weight).detach()
