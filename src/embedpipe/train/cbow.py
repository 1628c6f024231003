"""CBOW with negative sampling, batched like `sgns` (gensim's cbow_mean=1).

For each kept centre word (after subsampling), its contexts are the kept words within a
dynamic window b ~ U{1..window} on both sides in the same sequence (word2vec.c's rule,
`windows.chunk_windows`); the hidden vector h is the mean of the contexts' input vectors, and it
predicts the centre word (output table) against K negatives drawn from the noise table:

    loss = sum over examples of -log s(u_c . h) - sum_k [n_k != c] log s(-u_k . h).

Update rule as gensim with cbow_mean=1: the input is divided by the number of contexts,
but the full hidden-layer error neu1e = d loss / d h goes to *every* context row (not
neu1e / count, which the exact gradient of the mean would give; word2vec.c's -cbow 1 does
the same). `reference_loss` states that with autograd. word2vec's customary learning rate
for CBOW is 0.05 (TrainConfig.lr stays 0.025 by default: set it).

Batches are the window batches of skip-gram (`windows`): on CPU the compiled kernel
(`kernels.cbow_window_sgd`) trains centre word by centre word; on GPUs `cbow_step` takes
the batch expanded into examples (`ctx_pos` (M,) every context as a position in
`in_rows`, grouped by example, `ctx_offsets` (B + 1,) each example's slice, `out_pos`
(B, 1 + K) the centre and its negatives in `out_rows`) in blocks of tensor operations.
Gradients come back as coalesced sparse tensors over the touched rows, as `SkipGram`'s.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from embedpipe.train.kernels import cbow_window_sgd
from embedpipe.train.sgns import BLOCK, SkipGram
from embedpipe.train.windows import WindowBatch, window_contexts


# Longer than 60 lines: the block loop shares its buffers and running state in one frame.
def cbow_step(
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    in_rows: torch.Tensor,
    ctx_pos: torch.Tensor,
    ctx_offsets: torch.Tensor,
    out_rows: torch.Tensor,
    out_pos: torch.Tensor,
    lr: float = 0.0,
    block: int = BLOCK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_in over in_rows, grad_out over out_rows) of a compact CBOW batch.

    As `sgns_step`: with lr > 0 and more than one block, the blocks update working copies
    in turn and the returned "gradients" are (rows before - rows after) / lr.
    """
    batch, width = out_pos.shape
    dim = w_in.shape[1]
    dtype, device = w_in.dtype, w_in.device
    rows_in, rows_out = w_in.index_select(0, in_rows), w_out.index_select(0, out_rows)
    sequential = lr > 0 and batch > block
    weight = torch.ones(batch, width, dtype=dtype, device=device)
    weight[:, 1:] = out_pos[:, 1:] != out_pos[:, :1]
    signed = weight.clone()
    signed[:, 0] = -1.0
    if sequential:
        grad_in, grad_out = rows_in, rows_out
        signed.mul_(-lr)
    else:
        grad_in, grad_out = torch.zeros_like(rows_in), torch.zeros_like(rows_out)
    sign = torch.ones(width, dtype=dtype, device=device)
    sign[0] = -1.0
    counts = (ctx_offsets[1:] - ctx_offsets[:-1]).to(dtype)
    bounds = ctx_offsets.tolist()
    flat_out_pos = out_pos.reshape(-1)
    losses = []
    m = max(1, min(block, batch))
    for a in range(0, batch, m):
        n = min(m, batch - a)
        lo, hi = bounds[a], bounds[a + n]
        c_pos = ctx_pos[lo:hi]
        owner = torch.repeat_interleave(
            torch.arange(n, device=device), ctx_offsets[a + 1 : a + n + 1] - ctx_offsets[a : a + n]
        )
        h = torch.zeros(n, dim, dtype=dtype, device=device)
        h.index_add_(0, owner, rows_in.index_select(0, c_pos))
        h.div_(counts[a : a + n].unsqueeze(1))
        t_pos = flat_out_pos[a * width : (a + n) * width]
        u = rows_out.index_select(0, t_pos).view(n, width, dim)
        z = torch.bmm(h.unsqueeze(1), u.transpose(1, 2)).view(n, width).mul_(sign)
        losses.append(torch.dot(F.softplus(z).view(-1), weight[a : a + n].view(-1)))
        g = z.sigmoid_().mul_(signed[a : a + n])
        neu1e = torch.bmm(g.unsqueeze(1), u).view(n, dim)
        gu = (g.unsqueeze(2) * h.unsqueeze(1)).view(n * width, dim)
        grad_in.index_add_(0, c_pos, neu1e.index_select(0, owner))  # full neu1e per context
        grad_out.index_add_(0, t_pos, gu)
    if sequential:
        grad_in = grad_in.sub_(w_in.index_select(0, in_rows)).div_(-lr)
        grad_out = grad_out.sub_(w_out.index_select(0, out_rows)).div_(-lr)
    loss = torch.stack(losses).sum(dtype=torch.float64) if losses else torch.zeros((), dtype=dtype)
    return loss, grad_in, grad_out


class CBOW(SkipGram):
    """The same two tables as `SkipGram`; the step is CBOW's."""

    kernel = staticmethod(cbow_window_sgd)

    def tensor_step(
        self, w_in: torch.Tensor, w_out: torch.Tensor, batch: WindowBatch, lr: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        owner, context = window_contexts(batch)
        counts = torch.bincount(owner, minlength=len(batch.left))
        has = counts > 0
        ctx_offsets = torch.zeros(int(has.sum()) + 1, dtype=torch.int64, device=owner.device)
        torch.cumsum(counts[has], 0, out=ctx_offsets[1:])
        targets = torch.cat([batch.centre_out.unsqueeze(1), batch.neg_out], 1)[has]
        return cbow_step(
            w_in, w_out, batch.in_rows, context, ctx_offsets, batch.out_rows, targets, lr
        )


def reference_loss(
    w_in: torch.Tensor,
    w_out: torch.Tensor,
    contexts: list[list[int]],
    targets: torch.Tensor,
) -> torch.Tensor:
    """The CBOW loss with autograd, with gensim's cbow_mean=1 update as its "gradient".

    h = sum / n in value, but d h / d (each context vector) = I: every context receives
    the full hidden-layer error, as gensim and word2vec.c apply it.
    """
    hs = []
    for ctx in contexts:
        s = w_in[torch.tensor(ctx)].sum(0)
        hs.append(s.detach() / len(ctx) + (s - s.detach()))
    h = torch.stack(hs)
    scores = (w_out[targets] * h.unsqueeze(1)).sum(-1)
    live = (targets[:, 1:] != targets[:, :1]).to(scores.dtype)
    return -(F.logsigmoid(scores[:, 0]).sum() + (F.logsigmoid(-scores[:, 1:]) * live).sum())
