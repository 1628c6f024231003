"""Skip-gram with negative sampling: the word2vec formulas, batched for tensor hardware.

- keep probability of a word with count f among T tokens, threshold s (word2vec.c):
  p = (sqrt(f / (s T)) + 1) * (s T) / f, capped at 1; special tokens get 0 (never trained);
- noise distribution: count ** 0.75, normalised; special tokens never drawn. Negatives are
  drawn per pair with Walker's alias method (exact, O(1) a draw, O(V) memory), from the
  chunk's own random generator; a negative equal to the pair's context word is skipped, as
  in word2vec.c and gensim;
- pairs: for each kept centre word a window b ~ U{1..window}, contexts within b on both sides
  of the same sequence (after subsampling, as word2vec.c does).

The step (`sgns_step`) computes the loss and its gradients by hand instead of through
autograd: a batch arrives in compact form (the distinct rows it
touches and each pair's positions in them, built by `RowCompactor` on the data thread),
pairs are processed in blocks that stay in cache, and later blocks see the SGD updates of
earlier ones. `SkipGram` keeps `nn.Embedding(sparse=True)` tables and returns the
gradients as coalesced sparse tensors, so DistributedDataParallel reduces them as sparse
gradients: communication grows with the batch, never with the vocabulary. The gradient
equals autograd's on the plain loss (`reference_loss`; tested).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from embedpipe import schemas as S

BLOCK = 1024  # pairs per block of the step: (1 + K) x BLOCK x dim floats stay in L2/L3


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """Subsampling keep probability per id; special tokens (and count-0 ids) get 0."""
    counts = np.asarray(counts, dtype=np.float64)
    keep = np.zeros_like(counts)
    words = counts > 0
    if sample <= 0:
        keep[words] = 1.0
    else:
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


def alias_table(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table of a distribution: (threshold per slot, alias per slot).

    Slot i (drawn uniformly) yields i with probability threshold[i], else alias[i].
    """
    p = np.asarray(probs, dtype=np.float64)
    n = len(p)
    scaled = p * (n / p.sum())
    threshold = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = [int(i) for i in np.flatnonzero(scaled < 1.0)]
    large = [int(i) for i in np.flatnonzero(scaled >= 1.0)]
    while small and large:
        s, g = small.pop(), large.pop()
        threshold[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    # Leftovers are 1 up to rounding: they keep their own slot (threshold 1).
    return threshold, alias


def alias_probabilities(threshold: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The exact distribution an alias table samples (for checks)."""
    n = len(threshold)
    p = threshold.copy()
    np.add.at(p, alias, 1.0 - threshold)
    return p / n


def sample_alias(
    threshold: np.ndarray, alias: np.ndarray, size: int | tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """Draws from an alias table, one uniform double each (slot and coin from its bits)."""
    x = rng.random(size) * len(threshold)
    slot = x.astype(np.int64)
    np.minimum(slot, len(threshold) - 1, out=slot)
    return np.where(x - slot < threshold[slot], slot, alias[slot])


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


class RowCompactor:
    """Sorted distinct ids of an index array and each entry's position among them.

    `np.unique(ids, return_inverse=True)` in O(n + V) with two reusable V-sized buffers
    instead of a sort: ~10x faster on batches of Zipf-distributed ids.
    """

    def __init__(self, vocab_size: int) -> None:
        self.seen = np.zeros(vocab_size, dtype=bool)
        self.position = np.zeros(vocab_size, dtype=np.int64)

    def __call__(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.seen[ids] = True
        rows = np.flatnonzero(self.seen)
        self.seen[rows] = False
        self.position[rows] = np.arange(len(rows))
        return rows, self.position[ids]


def compact_rows(ids: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, inverse) of `ids`, as `np.unique(..., return_inverse=True)`."""
    return RowCompactor(vocab_size)(np.asarray(ids).ravel())


def sgns_step(
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    in_rows: torch.Tensor,
    in_pos: torch.Tensor,
    out_rows: torch.Tensor,
    out_pos: torch.Tensor,
    lr: float = 0.0,
    block: int = BLOCK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and gradients of a batch of pairs over the rows it touches, computed by hand.

    A batch is given compactly: `in_rows` the distinct centre ids, `in_pos` (B,) each
    pair's centre as a position in them; `out_rows` the distinct output ids, `out_pos`
    (B, 1 + K) each pair's context then its K negatives as positions in `out_rows`
    (`compact_rows` builds both). With centre c, context o and negatives n_k,

        loss = sum over pairs of -log s(u_o . v_c) - sum_k [n_k != o] log s(-u_k . v_c).

    Returns (loss, grad_in (len(in_rows), d), grad_out (len(out_rows), d)): row j is the
    gradient for row `*_rows[j]` of the table.

    Pairs are processed in blocks of `block` that stay in cache. With lr > 0 every block
    sees the SGD updates of the blocks before it, as a word2vec thread sees its own: the
    step works on copies of the touched rows, updates them in place block by block, and
    returns (rows before - rows after) / lr, so that the optimiser's -lr * gradient lands
    where block-by-block SGD would (up to float rounding). With lr = 0 (or a single block)
    it is exactly the gradient of the loss at the current tables.
    """
    batch, width = out_pos.shape
    dim = w_in.shape[1]
    dtype, device = w_in.dtype, w_in.device
    rows_in, rows_out = w_in.index_select(0, in_rows), w_out.index_select(0, out_rows)
    sequential = lr > 0 and batch > block
    # Per column: -1 for the context (-log s(x) = softplus(-x)), +1 for the negatives
    # (-log s(-x) = softplus(x)); 0 for a negative that is the context word itself, which
    # word2vec.c and gensim skip.
    weight = torch.ones(batch, width, dtype=dtype, device=device)
    weight[:, 1:] = out_pos[:, 1:] != out_pos[:, :1]
    signed = weight.clone()
    signed[:, 0] = -1.0
    if sequential:  # the working copies take the updates; gradients are derived at the end
        grad_in, grad_out = rows_in, rows_out
        signed.mul_(-lr)  # scaled here: index_add_ is fastest without alpha
    else:
        grad_in, grad_out = torch.zeros_like(rows_in), torch.zeros_like(rows_out)
    sign = torch.ones(width, dtype=dtype, device=device)
    sign[0] = -1.0
    losses = []
    m = max(1, min(block, batch))

    def buffer(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device=device)

    u_buf, v_buf, z_buf = buffer(m * width, dim), buffer(m, dim), buffer(m, 1, width)
    gv_buf, gu_buf = buffer(m, 1, dim), buffer(m, width, dim)
    flat_out_pos = out_pos.reshape(-1)
    for a in range(0, batch, m):
        n = min(m, batch - a)
        t_pos, c_pos = flat_out_pos[a * width : (a + n) * width], in_pos[a : a + n]
        u = torch.index_select(rows_out, 0, t_pos, out=u_buf[: n * width]).view(n, width, dim)
        v = torch.index_select(rows_in, 0, c_pos, out=v_buf[:n])
        z = torch.bmm(v.unsqueeze(1), u.transpose(1, 2), out=z_buf[:n]).view(n, width)
        z.mul_(sign)
        losses.append(torch.dot(F.softplus(z).view(-1), weight[a : a + n].view(-1)))
        g = z.sigmoid_().mul_(signed[a : a + n])  # d loss / d score (times -lr: sequential)
        gv = torch.bmm(g.unsqueeze(1), u, out=gv_buf[:n]).view(n, dim)
        gu = torch.mul(g.unsqueeze(2), v.unsqueeze(1), out=gu_buf[:n]).view(n * width, dim)
        grad_in.index_add_(0, c_pos, gv)
        grad_out.index_add_(0, t_pos, gu)
    if sequential:
        grad_in = grad_in.sub_(w_in.index_select(0, in_rows)).div_(-lr)
        grad_out = grad_out.sub_(w_out.index_select(0, out_rows)).div_(-lr)
    return torch.stack(losses).sum(dtype=torch.float64), grad_in, grad_out


class _SGNSLoss(torch.autograd.Function):
    """The batch loss with hand-computed gradients, returned as coalesced sparse tensors."""

    @staticmethod
    def forward(ctx, w_in, w_out, in_rows, in_pos, out_rows, out_pos, lr):  # noqa: ANN001, ANN205
        loss, grad_in, grad_out = sgns_step(w_in, w_out, in_rows, in_pos, out_rows, out_pos, lr)
        ctx.save_for_backward(in_rows, out_rows, grad_in, grad_out)
        ctx.shapes = (w_in.shape, w_out.shape)
        return loss.to(w_in.dtype)

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001, ANN205
        in_rows, out_rows, grad_in, grad_out = ctx.saved_tensors
        grads = [
            torch.sparse_coo_tensor(
                rows.unsqueeze(0), values.mul_(grad_loss), shape,
                is_coalesced=True, check_invariants=False,
            )
            for rows, values, shape in zip(
                (in_rows, out_rows), (grad_in, grad_out), ctx.shapes, strict=True
            )
        ]  # fmt: skip
        return grads[0], grads[1], None, None, None, None, None


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
        self,
        in_rows: torch.Tensor,
        in_pos: torch.Tensor,
        out_rows: torch.Tensor,
        out_pos: torch.Tensor,
        lr: float = 0.0,
    ) -> torch.Tensor:
        """Summed negative log-likelihood of a compact batch (see `sgns_step`).

        Gradients come out as sparse tensors over `in_rows` / `out_rows` (sorted, distinct:
        coalesced). `lr`: the step's learning rate, so that the blocks of the batch see
        the updates of the blocks before them.
        """
        return _SGNSLoss.apply(
            self.input.weight, self.output.weight, in_rows, in_pos, out_rows, out_pos, lr
        )


def reference_loss(
    w_in: torch.Tensor, w_out: torch.Tensor, centre: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The plain SGNS loss with autograd (the definition `sgns_step` implements)."""
    v = w_in[centre]
    scores = (w_out[targets] * v.unsqueeze(1)).sum(-1)
    live = (targets[:, 1:] != targets[:, :1]).to(scores.dtype)
    return -(F.logsigmoid(scores[:, 0]).sum() + (F.logsigmoid(-scores[:, 1:]) * live).sum())
