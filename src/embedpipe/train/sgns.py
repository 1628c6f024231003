"""Skip-gram with negative sampling: the word2vec formulas, batched for tensor hardware.

- keep probability of a word with count f among T tokens, threshold s (word2vec.c):
  p = (sqrt(f / (s T)) + 1) * (s T) / f, capped at 1;
- noise distribution: count ** 0.75, normalised; special tokens never drawn;
- pairs: for each kept centre word a window b ~ U{1..window}, contexts within b on both sides
  of the same sequence (after subsampling, as word2vec.c does).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from embedpipe import schemas as S


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Subsampling keep probability per id; special tokens (count 0) get 0."""
    counts = np.asarray(counts, dtype=np.float64)
    keep = np.zeros_like(counts)
    words = counts > 0
    if sample <= 0:
        keep[words] = 1.0
        return keep
    threshold = sample * counts.sum()
    f = counts[words]
    keep[words] = np.minimum((np.sqrt(f / threshold) + 1.0) * threshold / f, 1.0)
    keep[: len(S.SPECIAL_TOKENS)] = 0.0
    return keep


def noise_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """Unigram ** power, normalised; ids with count 0 (the specials) get probability 0."""
    weights = np.asarray(counts, dtype=np.float64) ** power
    weights[: len(S.SPECIAL_TOKENS)] = 0.0
    return weights / weights.sum()


def skipgram_pairs(
    flat: np.ndarray,
    offsets: np.ndarray,
    keep_prob: np.ndarray,
    window: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(centre, context) id pairs of a chunk, after subsampling, with dynamic windows."""
    seq = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    kept = rng.random(len(flat)) < keep_prob[flat]
    ids, seq = flat[kept], seq[kept]
    reach = rng.integers(1, window + 1, size=len(ids))
    centres, contexts = [], []
    for d in range(1, min(window, len(ids) - 1) + 1):
        same = seq[:-d] == seq[d:]
        forward = same & (reach[:-d] >= d)  # centre left, context d to its right
        backward = same & (reach[d:] >= d)  # centre right, context d to its left
        centres += [ids[:-d][forward], ids[d:][backward]]
        contexts += [ids[d:][forward], ids[:-d][backward]]
    if not centres:
        empty = np.empty(0, np.int64)
        return empty, empty
    return np.concatenate(centres).astype(np.int64), np.concatenate(contexts).astype(np.int64)


class SkipGram(nn.Module):
    """Input and output embedding tables, sparse so a step touches only the rows it uses."""

    def __init__(self, vocab_size: int, dim: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.input = nn.Embedding(vocab_size, dim, sparse=True)
        self.output = nn.Embedding(vocab_size, dim, sparse=True)
        with torch.no_grad():
            self.input.weight.uniform_(-0.5 / dim, 0.5 / dim, generator=generator)
            self.output.weight.zero_()

    def forward(
        self, centre: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """Summed negative log-likelihood of the batch: -log s(u_o.v_c) - sum log s(-u_k.v_c)."""
        v = self.input(centre)  # (B, d)
        positive = (v * self.output(context)).sum(-1)  # (B,)
        negative = torch.bmm(self.output(negatives), v.unsqueeze(2)).squeeze(2)  # (B, K)
        return -(F.logsigmoid(positive).sum() + F.logsigmoid(-negative).sum())
